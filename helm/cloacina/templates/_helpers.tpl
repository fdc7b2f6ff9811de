{{/*
Expand the name of the chart.
*/}}
{{- define "cloacina.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "cloacina.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "cloacina.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "cloacina.labels" -}}
helm.sh/chart: {{ include "cloacina.chart" . }}
{{ include "cloacina.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (each workload adds app.kubernetes.io/component: poller|worker|flower|migrate)
*/}}
{{- define "cloacina.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloacina.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "cloacina.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cloacina.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion. No public image exists: the repository is required.
*/}}
{{- define "cloacina.image" -}}
{{- $repository := required "set image.repository to an image built from the repository's Dockerfile (docker build -t REGISTRY/cloacina:TAG . && docker push REGISTRY/cloacina:TAG): no public cloacina image is published" .Values.image.repository }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Name of the Secret holding the connection URLs: the user's existing one, or the chart's.
*/}}
{{- define "cloacina.secretName" -}}
{{- default (include "cloacina.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Name of the Secret the migrate hook reads: it must exist before the release's own resources, so without
existingSecret the hook gets a copy of the chart's Secret created as a hook itself (migrate-secret.yaml).
*/}}
{{- define "cloacina.migrateSecretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-migrate" (include "cloacina.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the web's "user:password".
*/}}
{{- define "cloacina.webSecretName" -}}
{{- default (printf "%s-web" (include "cloacina.fullname" .) | trunc 63 | trimSuffix "-") .Values.web.auth.existingSecret }}
{{- end }}

{{/*
Name of the Secret holding Flower's "user:password".
*/}}
{{- define "cloacina.flowerSecretName" -}}
{{- default (printf "%s-flower" (include "cloacina.fullname" .) | trunc 63 | trimSuffix "-") .Values.flower.basicAuth.existingSecret }}
{{- end }}

{{/*
Data of the chart's connection Secret (secret.yaml and migrate-secret.yaml render the same data).
*/}}
{{- define "cloacina.secretData" -}}
{{ .Values.secrets.keys.databaseUrl }}: {{ required "set secrets.databaseUrl (a postgresql:// URL) or secrets.existingSecret" .Values.secrets.databaseUrl | b64enc | quote }}
{{ .Values.secrets.keys.brokerUrl }}: {{ required "set secrets.brokerUrl (a redis:// URL) or secrets.existingSecret" .Values.secrets.brokerUrl | b64enc | quote }}
{{- if .Values.secrets.redisUrl }}
{{ .Values.secrets.keys.redisUrl }}: {{ .Values.secrets.redisUrl | b64enc | quote }}
{{- end }}
{{- end }}

{{/*
Settings as CLOACINA_<KEY> pairs (configmap.yaml data); null values are left out.
*/}}
{{- define "cloacina.configData" -}}
{{- range $key, $value := .Values.config }}
{{- if not (kindIs "invalid" $value) }}
{{ printf "CLOACINA_%s" (upper $key) }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment of the cloacina containers that use the database (poller, worker, web, migrate hooks): the URLs from the
Secret, then extraEnv. The settings come from the ConfigMap through envFrom (see each workload). Argument: a dict
with "context" (the root) and "secretName".
*/}}
{{- define "cloacina.secretEnv" -}}
{{- $root := .context }}
- name: CLOACINA_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $root.Values.secrets.keys.databaseUrl }}
- name: CLOACINA_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $root.Values.secrets.keys.brokerUrl }}
- name: CLOACINA_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ $root.Values.secrets.keys.redisUrl }}
      optional: true
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Prometheus scrape annotations for pods serving /metrics on config.metrics_port.
*/}}
{{- define "cloacina.metricsAnnotations" -}}
{{- if and .Values.metrics.podAnnotations .Values.config.metrics_port }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.config.metrics_port | toString | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Volumes every cloacina pod mounts: a size-limited emptyDir on /tmp (the root file system is read-only) and, when
set, the user's app ConfigMap.
*/}}
{{- define "cloacina.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit | quote }}
{{- end }}

{{- define "cloacina.volumes" -}}
{{ include "cloacina.tmpVolume" . }}
{{- if .Values.app.configMapName }}
- name: app
  configMap:
    name: {{ .Values.app.configMapName }}
{{- end }}
{{- end }}

{{- define "cloacina.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.app.configMapName }}
- name: app
  mountPath: {{ .Values.app.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
HTTP probes of a container: startup and liveness on /livez, readiness on /readyz. Argument: a dict with "port"
(a container port name) and "probes" (the component's values with startupProbe, livenessProbe, readinessProbe).
*/}}
{{- define "cloacina.httpProbes" -}}
startupProbe:
  httpGet:
    path: /livez
    port: {{ .port }}
  {{- toYaml .probes.startupProbe | nindent 2 }}
livenessProbe:
  httpGet:
    path: /livez
    port: {{ .port }}
  {{- toYaml .probes.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  {{- toYaml .probes.readinessProbe | nindent 2 }}
{{- end }}

{{/*
The metrics port every poller and worker serves /metrics, /livez and /readyz on.
*/}}
{{- define "cloacina.metricsPort" -}}
{{- required "config.metrics_port is needed: the pollers' and workers' probes use /livez and /readyz on it" .Values.config.metrics_port }}
{{- end }}

{{/*
The broker URL as KEDA needs it, derived from the one broker URL the services use: a YAML dict with address
(host:port), databaseIndex, enableTLS, username and password. Without existingSecret the URL is secrets.brokerUrl;
with it, the Secret's broker-url key is read at install time (helm lookup), which an offline `helm template` cannot do.
*/}}
{{- define "cloacina.kedaRedis" -}}
{{- $url := .Values.secrets.brokerUrl }}
{{- if .Values.secrets.existingSecret }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.secrets.existingSecret }}
{{- $data := (get (default dict $secret) "data") | default dict }}
{{- if not (hasKey $data .Values.secrets.keys.brokerUrl) }}
{{- fail (printf "worker.keda derives the Redis address from the broker URL: with secrets.existingSecret the chart reads key %q of Secret %q at install time, and it is not readable here (an offline `helm template`, or the Secret is missing)" .Values.secrets.keys.brokerUrl .Values.secrets.existingSecret) }}
{{- end }}
{{- $url = index $data .Values.secrets.keys.brokerUrl | b64dec }}
{{- end }}
{{- $url = required "set secrets.brokerUrl (a redis:// URL) or secrets.existingSecret" $url }}
{{- $parsed := urlParse $url }}
{{- if not (has $parsed.scheme (list "redis" "rediss")) }}
{{- fail (printf "worker.keda needs a redis:// or rediss:// broker URL, got scheme %q" $parsed.scheme) }}
{{- end }}
{{- $userinfo := $parsed.userinfo | default "" }}
{{- if contains "%" $userinfo }}
{{- fail "worker.keda passes the broker URL's password to KEDA as written: use a password without percent-encoding (letters, digits, - _ . ~)" }}
{{- end }}
{{- $host := $parsed.host }}
{{- if not (regexMatch ":[0-9]+$" $host) }}
{{- $host = printf "%s:6379" $host }}
{{- end }}
{{- $db := trimPrefix "/" $parsed.path | default "0" }}
{{- $user := "" }}
{{- $password := "" }}
{{- if contains ":" $userinfo }}
{{- $user = index (splitn ":" 2 $userinfo) "_0" }}
{{- $password = index (splitn ":" 2 $userinfo) "_1" }}
{{- else }}
{{- $user = $userinfo }}
{{- end }}
address: {{ $host | quote }}
databaseIndex: {{ $db | quote }}
enableTLS: {{ eq $parsed.scheme "rediss" | toString | quote }}
username: {{ $user | quote }}
password: {{ $password | quote }}
{{- end }}

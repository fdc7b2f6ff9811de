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

{{/*
The worker pools, resolved: sets "pools" in the dict it is given (argument: a dict with "context", the root, and
"out"). Without worker.pools, one pool named "default" made of the worker.* values, with the names and selector of
the single-pool chart (<fullname>-worker: an upgrade changes no immutable selector). With worker.pools, each entry is
worker.* with the entry's keys replacing those of the same name (autoscaling, keda, podDisruptionBudget and the probes
key by key), deployed as <fullname>-worker-<name> and selected by its cloacina.io/worker-pool label. Each pool gets
"name", "queues", "legacy" (the single-pool form), "fullname" and "where" (how error messages name it). The chart
refuses a pool without a valid unique name, an unknown key (a typo would be ignored otherwise), a non-default pool
without queues, and pools none of which consumes config.queue (where tasks go unless routed elsewhere).
*/}}
{{- define "cloacina.workerPools" -}}
{{- $root := .context }}
{{- $fullname := include "cloacina.fullname" $root }}
{{- $base := omit $root.Values.worker "pools" }}
{{- $entries := $root.Values.worker.pools | default (list) }}
{{- $legacy := empty $entries }}
{{- if $legacy }}
{{- $entries = list (dict "name" "default") }}
{{- end }}
{{- $known := concat (keys $base) (list "name" "queues") }}
{{- $byKey := list "autoscaling" "keda" "podDisruptionBudget" "startupProbe" "livenessProbe" "readinessProbe" }}
{{- $pools := list }}
{{- $names := list }}
{{- $consumed := list }}
{{- range $i, $entry := $entries }}
{{- if not (kindIs "map" $entry) }}
{{- fail (printf "worker.pools[%d] must be a map with at least a name (and queues), e.g. {name: heavy, queues: [heavy]}" $i) }}
{{- end }}
{{- $name := toString (required (printf "worker.pools[%d] needs a name" $i) $entry.name) }}
{{- if or (gt (len $name) 40) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name)) }}
{{- fail (printf "worker.pools[%d].name %q must be a DNS label of at most 40 characters (lower-case letters, digits, '-'): it names the pool's Deployment and labels its pods" $i $name) }}
{{- end }}
{{- if has $name $names }}
{{- fail (printf "worker.pools: the name %q is used twice" $name) }}
{{- end }}
{{- $names = append $names $name }}
{{- range $key, $_ := $entry }}
{{- if not (has $key $known) }}
{{- fail (printf "worker.pools[%s]: unknown key %q (a pool takes name, queues and the keys of worker: %s)" $name $key (keys $base | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- $pool := deepCopy $base }}
{{- range $key, $value := omit $entry "name" "queues" }}
{{- if and (has $key $byKey) (kindIs "map" $value) }}
{{- $merged := deepCopy (index $base $key) }}
{{- range $k, $v := $value }}
{{- $_ := set $merged $k $v }}
{{- end }}
{{- $_ := set $pool $key $merged }}
{{- else }}
{{- $_ := set $pool $key $value }}
{{- end }}
{{- end }}
{{- $queues := $entry.queues }}
{{- if and (not $queues) (eq $name "default") }}
{{- $queues = list (required "config.queue is needed: the default worker pool consumes it" $root.Values.config.queue) }}
{{- end }}
{{- if not $queues }}
{{- fail (printf "worker.pools[%s] needs queues, e.g. [%s]: only the pool named default consumes config.queue without saying so" $name $name) }}
{{- end }}
{{- if not (kindIs "slice" $queues) }}
{{- fail (printf "worker.pools[%s].queues must be a list of queue names, e.g. [%s]" $name $name) }}
{{- end }}
{{- range $queue := $queues }}
{{- if or (not (kindIs "string" $queue)) (not (regexMatch "^[A-Za-z0-9_.:-]+$" $queue)) }}
{{- fail (printf "worker.pools[%s].queues: %v is not a queue name (letters, digits, _ . : -)" $name $queue) }}
{{- end }}
{{- end }}
{{- $consumed = concat $consumed $queues }}
{{- $_ := set $pool "name" $name }}
{{- $_ := set $pool "queues" $queues }}
{{- $_ := set $pool "legacy" $legacy }}
{{- $_ := set $pool "fullname" (ternary (printf "%s-worker" $fullname) (printf "%s-worker-%s" $fullname $name) $legacy) }}
{{- $_ := set $pool "where" (ternary "worker" (printf "worker.pools[%s]" $name) $legacy) }}
{{- $pools = append $pools $pool }}
{{- end }}
{{- if not (has $root.Values.config.queue $consumed) }}
{{- fail (printf "no worker pool consumes config.queue (%q), where every task goes unless routed to another queue: add it to one pool's queues (the pool named default consumes it when it names no queues)" $root.Values.config.queue) }}
{{- end }}
{{- $_ := set .out "pools" $pools }}
{{- end }}

{{/*
Labels of a worker pool's objects and pods (argument: a dict with "context" and "pool"); "cloacina.workerSelector"
selects its pods: the single-pool chart's selector as it was, or that plus the pool label.
*/}}
{{- define "cloacina.workerLabels" -}}
{{ include "cloacina.labels" .context }}
app.kubernetes.io/component: worker
cloacina.io/worker-pool: {{ .pool.name }}
{{- end }}

{{- define "cloacina.workerSelector" -}}
{{ include "cloacina.selectorLabels" .context }}
app.kubernetes.io/component: worker
{{- if not .pool.legacy }}
cloacina.io/worker-pool: {{ .pool.name }}
{{- end }}
{{- end }}

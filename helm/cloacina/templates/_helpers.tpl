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
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "cloacina.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
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
Environment of the cloacina containers: the URLs from the Secret, then extraEnv. The settings come from the
ConfigMap through envFrom (see each workload). Argument: a dict with "context" (the root) and "secretName".
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
Volumes every cloacina pod mounts: an emptyDir on /tmp (the root file system is read-only) and, when set, the
user's app ConfigMap.
*/}}
{{- define "cloacina.volumes" -}}
- name: tmp
  emptyDir: {}
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

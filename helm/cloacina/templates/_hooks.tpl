{{/*
A schema hook Job. Hooks run before the release's own resources exist (pre-install) or change (pre-upgrade,
pre-rollback), so the Job takes its settings as plain env (not from the ConfigMap), its URLs from the hook Secret of
migrate-secret.yaml (or existingSecret), and the namespace's default ServiceAccount with no token mounted. Argument:
a dict with "root", "name" (suffix), "hook" (the helm.sh/hook value) and "command" (a list).
*/}}
{{- define "cloacina.hookJob" -}}
{{- $root := .root }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ printf "%s-%s" (include "cloacina.fullname" $root) .name | trunc 63 | trimSuffix "-" }}
  labels:
    {{- include "cloacina.labels" $root | nindent 4 }}
    app.kubernetes.io/component: migrate
  annotations:
    "helm.sh/hook": {{ .hook }}
    "helm.sh/hook-weight": "0"
    # A failed Job stays for `kubectl logs` until the next install/upgrade/rollback replaces it.
    "helm.sh/hook-delete-policy": before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ $root.Values.migrate.backoffLimit }}
  activeDeadlineSeconds: {{ $root.Values.migrate.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "cloacina.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: migrate
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $root.Values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: migrate
          image: {{ include "cloacina.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: {{ toJson .command }}
          env:
            {{- range $key, $value := $root.Values.config }}
            {{- if not (kindIs "invalid" $value) }}
            - name: {{ printf "CLOACINA_%s" (upper $key) }}
              value: {{ $value | toString | quote }}
            {{- end }}
            {{- end }}
            {{- include "cloacina.secretEnv" (dict "context" $root "secretName" (include "cloacina.migrateSecretName" $root)) | trim | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          resources:
            {{- toYaml $root.Values.migrate.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        {{- include "cloacina.tmpVolume" $root | nindent 8 }}
{{- end }}

{{/*
An Ingress for one component's Service, HTTPS unless tls.enabled is false. Argument: a dict with "root", "component"
(web or flower), "values" (the component's ingress values), "servicePort" and "path".
*/}}
{{- define "cloacina.ingress" -}}
{{- $root := .root }}
{{- $name := printf "%s-%s" (include "cloacina.fullname" $root) .component }}
{{- $values := .values }}
{{- $servicePort := .servicePort }}
{{- $path := .path }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $name }}
  labels:
    {{- include "cloacina.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with $values.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $values.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- if $values.tls.enabled }}
  tls:
    - hosts:
        {{- range $values.hosts }}
        - {{ . | quote }}
        {{- end }}
      secretName: {{ default (printf "%s-tls" $name) $values.tls.secretName }}
  {{- end }}
  rules:
    {{- range (required (printf "set %s.ingress.hosts" .component) $values.hosts) }}
    - host: {{ . | quote }}
      http:
        paths:
          - path: {{ $path }}
            pathType: Prefix
            backend:
              service:
                name: {{ $name }}
                port:
                  number: {{ $servicePort }}
    {{- end }}
{{- end }}

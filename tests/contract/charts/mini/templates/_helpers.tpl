{{- define "mini.labels" -}}
app.kubernetes.io/name: mini
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

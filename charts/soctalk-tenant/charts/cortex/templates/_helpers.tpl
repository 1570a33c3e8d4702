{{/*
Cortex is rendered by the soctalk-tenant chart, not by this chart on its own: Helm gives a
subchart no access to its parent's values, and the tenant contract keeps sizing under
components.cortex. The parent calls "cortex.all" with one context dict:

  root            the parent's top-level context (.Release, .Capabilities)
  cfg             this subchart's values (images, ports, Secret names)
  sizing          components.cortex from the tenant contract
  replicas        0 when the tenant is suspended, else 1
  labels          labels every tenant object carries
  chart           "cortex-<version>" for the helm.sh/chart label
  serviceAccount  the tenant's data-plane ServiceAccount (no RBAC, no token)
*/}}

{{- define "cortex.labels" -}}
{{- $own := dict "app.kubernetes.io/name" .component "app.kubernetes.io/component" .component "helm.sh/chart" .ctx.chart -}}
{{- toYaml (merge $own .ctx.labels) }}
{{- end }}

{{- define "cortex.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .ctx.root.Release.Name }}
{{- end }}

{{- define "cortex.image" -}}
{{ .repository }}{{ with .tag }}:{{ . }}{{ end }}@{{ .digest }}
{{- end }}

{{- define "cortex.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "cortex.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* A credential from a tenant bootstrap Secret: by reference only, never a literal. */}}
{{- define "cortex.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}

{{- define "cortex.all" -}}
{{ include "cortex.elasticsearch" . }}
---
{{ include "cortex.cortex" . }}
{{- end }}

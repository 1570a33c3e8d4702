{{/*
TheHive is rendered by the soctalk-tenant chart, not by this chart on its own: Helm gives a
subchart no access to its parent's values, and the tenant contract keeps sizing under
components.thehive. The parent calls "thehive.all" with one context dict:

  root            the parent's top-level context (.Release, .Capabilities)
  cfg             this subchart's values (images, ports, Secret names)
  sizing          components.thehive from the tenant contract
  replicas        0 when the tenant is suspended, else 1
  labels          labels every tenant object carries
  chart           "thehive-<version>" for the helm.sh/chart label
  serviceAccount  the tenant's data-plane ServiceAccount (no RBAC, no token)
  cortexUrl          Cortex endpoint TheHive sends analyses to
  cortexInNamespace  true when that Cortex is the in-namespace one (its API key is here)
*/}}

{{- define "thehive.labels" -}}
{{- $own := dict "app.kubernetes.io/name" .component "app.kubernetes.io/component" .component "helm.sh/chart" .ctx.chart -}}
{{- toYaml (merge $own .ctx.labels) }}
{{- end }}

{{- define "thehive.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .ctx.root.Release.Name }}
{{- end }}

{{- define "thehive.image" -}}
{{ .repository }}{{ with .tag }}:{{ . }}{{ end }}@{{ .digest }}
{{- end }}

{{- define "thehive.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "thehive.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* A credential from a tenant bootstrap Secret: by reference only, never a literal. */}}
{{- define "thehive.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}

{{- define "thehive.all" -}}
{{ include "thehive.cassandra" . }}
---
{{ include "thehive.thehive" . }}
{{- end }}

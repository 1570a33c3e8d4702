{{/*
Wazuh is rendered by the soctalk-tenant chart, not by this chart on its own: Helm gives a
subchart no access to its parent's values, and the tenant contract keeps sizing under
components.wazuh. The parent calls the named templates below with one context dict:

  root            the parent's top-level context (.Release, .Capabilities)
  cfg             this subchart's values (images, ports, Secret names)
  sizing          components.wazuh from the tenant contract
  replicas        0 when the tenant is suspended, else 1
  labels          labels every tenant object carries
  chart           "wazuh-<version>" for the helm.sh/chart label
  serviceAccount  the tenant's data-plane ServiceAccount (no RBAC, no token)
  agentTlsSecret  Secret with the certificate for the agent enrollment channel (1515)
*/}}

{{- define "wazuh.labels" -}}
{{- $own := dict "app.kubernetes.io/name" (printf "wazuh-%s" .component) "app.kubernetes.io/component" .component "helm.sh/chart" .ctx.chart -}}
{{- toYaml (merge $own .ctx.labels) }}
{{- end }}

{{- define "wazuh.selector" -}}
app.kubernetes.io/name: {{ printf "wazuh-%s" .component }}
app.kubernetes.io/instance: {{ .ctx.root.Release.Name }}
{{- end }}

{{- define "wazuh.image" -}}
{{ .repository }}{{ with .tag }}:{{ . }}{{ end }}@{{ .digest }}
{{- end }}

{{- define "wazuh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "wazuh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* A credential from a tenant bootstrap Secret: by reference only, never a literal. */}}
{{- define "wazuh.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}

{{- define "wazuh.all" -}}
{{ include "wazuh.manager" . }}
---
{{ include "wazuh.indexer" . }}
{{- if .sizing.dashboard.enabled }}
---
{{ include "wazuh.dashboard" . }}
{{- end }}
{{- end }}

{{/*
Labels every object of the release carries: the recommended app.kubernetes.io labels plus the
tenant's namespace labels, so ops, NetworkPolicies and admission can select a tenant's objects.
Returned as YAML; callers that need a dict use `include ... | fromYaml`.
*/}}
{{- define "soctalk-tenant.labelDict" -}}
{{- $l := dict "app.kubernetes.io/part-of" "soctalk" "app.kubernetes.io/managed-by" .Release.Service "app.kubernetes.io/instance" .Release.Name "soctalk.io/tenant-slug" .Values.tenant.slug -}}
{{- range $k, $v := .Values.namespaceLabels }}{{ $_ := set $l $k $v }}{{ end -}}
{{- toYaml $l -}}
{{- end }}

{{- define "soctalk-tenant.labels" -}}
{{- $l := include "soctalk-tenant.labelDict" . | fromYaml -}}
{{- $_ := set $l "helm.sh/chart" (printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_") -}}
{{- toYaml $l -}}
{{- end }}

{{- define "soctalk-tenant.adapterSelector" -}}
app.kubernetes.io/name: soctalk-adapter
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every workload scales to 0 while the tenant is suspended. */}}
{{- define "soctalk-tenant.replicas" -}}
{{- ternary 0 1 .Values.suspended -}}
{{- end }}

{{- define "soctalk-tenant.dataPlaneServiceAccount" -}}soctalk-data-plane{{- end }}

{{/*
The install namespace. The contract has no separate key for it: llm.apiKeyRef.namespace is,
by seed 000's secret placement, the install namespace (soctalk-system).
*/}}
{{- define "soctalk-tenant.systemNamespace" -}}
{{- .Values.llm.apiKeyRef.namespace -}}
{{- end }}

{{- define "soctalk-tenant.cortexUrl" -}}
{{- default "http://cortex:9001" .Values.integrations.externalCortexUrl -}}
{{- end }}

{{/* Port of a URL: explicit, else the scheme's default, else .default. */}}
{{- define "soctalk-tenant.urlPort" -}}
{{- $u := urlParse .url -}}
{{- $hp := splitList ":" $u.host -}}
{{- if gt (len $hp) 1 }}{{ last $hp }}
{{- else if eq $u.scheme "https" }}443
{{- else if eq $u.scheme "http" }}80
{{- else }}{{ .default }}
{{- end -}}
{{- end }}

{{- define "soctalk-tenant.image" -}}
{{ .repository }}{{ with .tag }}:{{ . }}{{ end }}@{{ .digest }}
{{- end }}

{{/*
Cross-field rules JSON Schema cannot state: the namespace labels must describe this tenant,
or NetworkPolicies and the admission policy would select another tenant's objects.
*/}}
{{- define "soctalk-tenant.validate" -}}
{{- $t := .Values.tenant -}}
{{- $n := .Values.namespaceLabels -}}
{{- range $label, $field := dict "tenant-id" "id" "mssp-id" "msspId" "install-id" "installId" -}}
{{- if ne (index $n $label) (index $t $field) -}}
{{- fail (printf "namespaceLabels.%s (%s) must equal tenant.%s (%s)" $label (index $n $label) $field (index $t $field)) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{- define "soctalk-system.labels" -}}
app.kubernetes.io/part-of: soctalk
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
soctalk.io/install-id: {{ .root.Values.install.installId }}
{{- with .component }}
app.kubernetes.io/name: soctalk-{{ . }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "soctalk-system.selector" -}}
app.kubernetes.io/name: soctalk-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "soctalk-system.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{ $i.registry }}/{{ $i.repository }}@{{ $i.digest }}
{{- else -}}
{{ $i.registry }}/{{ $i.repository }}:{{ $i.tag }}
{{- end -}}
{{- end }}

{{/* ServiceAccount names follow seed 000 (soctalk-<role>-sa). */}}
{{- define "soctalk-system.sa" -}}soctalk-{{ . }}-sa{{- end }}

{{/* Users allowed to act on tenant namespaces; the admission policy confines exactly these. */}}
{{- define "soctalk-system.controllerUsers" -}}
{{- $ns := .Release.Namespace -}}
{{- list (printf "system:serviceaccount:%s:%s" $ns (include "soctalk-system.sa" "secrets")) (printf "system:serviceaccount:%s:%s" $ns (include "soctalk-system.sa" "helm-runner")) | toJson -}}
{{- end }}

{{- define "soctalk-system.postgresHost" -}}
{{- if .Values.postgres.enabled -}}
soctalk-postgres.{{ .Release.Namespace }}.svc
{{- else -}}
{{ .Values.postgres.external.host }}
{{- end -}}
{{- end }}

{{- define "soctalk-system.postgresPort" -}}
{{- if .Values.postgres.enabled }}5432{{ else }}{{ .Values.postgres.external.port }}{{ end -}}
{{- end }}

{{- define "soctalk-system.postgresDatabase" -}}
{{- if .Values.postgres.enabled }}soctalk{{ else }}{{ .Values.postgres.external.database }}{{ end -}}
{{- end }}

{{/*
Database credentials for one Postgres role (admin | app | mssp), by reference only. Internal
Postgres: Secret soctalk-postgres-<role>-creds (username/password). External: the seed's
existingSecret (<role>_user/<role>_password). The URL is assembled by the kubelet from the
two variables ($(VAR) expansion), so it never appears in values or manifests.
*/}}
{{- define "soctalk-system.dbEnv" -}}
{{- $root := .root -}}
{{- $pg := $root.Values.postgres -}}
{{- $secret := ternary (printf "soctalk-postgres-%s-creds" .role) $pg.external.existingSecret $pg.enabled -}}
{{- $userKey := ternary "username" (printf "%s_user" .role) $pg.enabled -}}
{{- $passKey := ternary "password" (printf "%s_password" .role) $pg.enabled -}}
- name: {{ .prefix }}DB_USER
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $userKey }}
- name: {{ .prefix }}DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $passKey }}
- name: {{ .prefix }}DATABASE_URL
  value: {{ printf "postgresql+asyncpg://$(%sDB_USER):$(%sDB_PASSWORD)@%s:%s/%s" .prefix .prefix (include "soctalk-system.postgresHost" $root) (include "soctalk-system.postgresPort" $root) (include "soctalk-system.postgresDatabase" $root) | quote }}
{{- end }}

{{- define "soctalk-system.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}

{{- define "soctalk-system.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "soctalk-system.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
One control-plane Deployment. Context dict:
  root, component (e.g. helm-runner), sa, automount (needs the Kubernetes API),
  replicas, resources, env (extra env, YAML list string)
Every service is the same image and CLI (`soctalk serve <component>`), health on :8080.
*/}}
{{- define "soctalk-system.deployment" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: soctalk-{{ .component }}
  labels:
    {{- include "soctalk-system.labels" (dict "root" $root "component" .component) | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "soctalk-system.selector" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "soctalk-system.labels" (dict "root" $root "component" .component) | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    spec:
      serviceAccountName: {{ .sa }}
      automountServiceAccountToken: {{ .automount }}
      enableServiceLinks: false
      securityContext:
        {{- include "soctalk-system.podSecurityContext" . | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "soctalk-system.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", {{ .component | quote }}]
          ports:
            - name: http
              containerPort: 8080
              protocol: TCP
          envFrom:
            - configMapRef:
                name: soctalk-config
          env:
            - name: SOCTALK_SERVICE
              value: {{ .component | quote }}
            {{- include "soctalk-system.dbEnv" (dict "root" $root "role" "app" "prefix" "SOCTALK_") | nindent 12 }}
            {{- with $root.Values.nats.credentialsSecret }}
            - name: SOCTALK_NATS_CREDS_FILE
              value: /var/run/soctalk/nats/nats.creds
            {{- end }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- include "soctalk-system.containerSecurityContext" . | nindent 12 }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 5
            failureThreshold: 36
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: 10
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 20
            failureThreshold: 3
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: tenant-defaults
              mountPath: /etc/soctalk
              readOnly: true
            {{- if $root.Values.nats.credentialsSecret }}
            - name: nats-creds
              mountPath: /var/run/soctalk/nats
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        - name: tenant-defaults
          configMap:
            name: soctalk-tenant-defaults
        {{- with $root.Values.nats.credentialsSecret }}
        - name: nats-creds
          secret:
            secretName: {{ . }}
            defaultMode: 0400
            items:
              - key: nats.creds
                path: nats.creds
        {{- end }}
{{- end }}

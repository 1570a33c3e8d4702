{{- define "cortex.cortex" -}}
{{- $c := .cfg -}}
{{- $s := .sizing -}}
{{- $boot := $c.secrets.bootstrap -}}
apiVersion: v1
kind: Service
metadata:
  name: cortex
  labels:
    {{- include "cortex.labels" (dict "ctx" . "component" "cortex") | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "cortex.selector" (dict "ctx" . "component" "cortex") | nindent 4 }}
  ports:
    - name: http
      port: {{ $c.ports.http }}
      targetPort: http
      protocol: TCP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cortex
  labels:
    {{- include "cortex.labels" (dict "ctx" . "component" "cortex") | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "cortex.selector" (dict "ctx" . "component" "cortex") | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cortex.labels" (dict "ctx" . "component" "cortex") | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "cortex.podSecurityContext" $c.podSecurity | nindent 8 }}
      containers:
        - name: cortex
          image: {{ include "cortex.image" $c.images.cortex }}
          imagePullPolicy: IfNotPresent
          ports:
            - name: http
              containerPort: {{ $c.ports.http }}
              protocol: TCP
          env:
            - name: es_uri
              value: {{ printf "http://cortex-elasticsearch:%v" $c.ports.elasticsearch | quote }}
            {{- include "cortex.secretEnv" (dict "env" "CORTEX_ADMIN_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "cortex.secretEnv" (dict "env" "CORTEX_ADMIN_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
            {{- include "cortex.secretEnv" (dict "env" "CORTEX_SOCTALK_API_KEY" "name" $boot.name "key" $boot.apiKeyKey) | nindent 12 }}
            {{- /* Allowlist; empty means the image's safe default set (seed 001). */}}
            - name: CORTEX_ANALYZERS
              value: {{ join "," $s.analyzers | quote }}
            - name: JOB_DIRECTORY
              value: /tmp/cortex-jobs
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- include "cortex.containerSecurityContext" . | nindent 12 }}
          startupProbe:
            httpGet:
              path: /api/status
              port: http
            periodSeconds: 10
            failureThreshold: 60
          readinessProbe:
            httpGet:
              path: /api/status
              port: http
            periodSeconds: 10
          livenessProbe:
            httpGet:
              path: /api/status
              port: http
            periodSeconds: 20
            failureThreshold: 6
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir: {}
{{- end }}

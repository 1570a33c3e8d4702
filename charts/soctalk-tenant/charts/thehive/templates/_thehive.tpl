{{- define "thehive.thehive" -}}
{{- $c := .cfg -}}
{{- $s := .sizing -}}
{{- $boot := $c.secrets.bootstrap -}}
{{- $creds := $c.secrets.cassandra -}}
apiVersion: v1
kind: Service
metadata:
  name: thehive
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "thehive") | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "thehive.selector" (dict "ctx" . "component" "thehive") | nindent 4 }}
  ports:
    - name: http
      port: {{ $c.ports.http }}
      targetPort: http
      protocol: TCP
---
{{- /* Case attachments live on their own volume; the Deployment recreates (RWO) instead of rolling. */}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: thehive-files
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "thehive") | nindent 4 }}
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: {{ $c.attachments.size }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: thehive
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "thehive") | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  revisionHistoryLimit: 3
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "thehive.selector" (dict "ctx" . "component" "thehive") | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "thehive.labels" (dict "ctx" . "component" "thehive") | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "thehive.podSecurityContext" $c.podSecurity | nindent 8 }}
      containers:
        - name: thehive
          image: {{ include "thehive.image" $c.images.thehive }}
          imagePullPolicy: IfNotPresent
          ports:
            - name: http
              containerPort: {{ $c.ports.http }}
              protocol: TCP
          env:
            - name: TH_CQL_HOSTNAMES
              value: cassandra
            {{- include "thehive.secretEnv" (dict "env" "TH_CQL_USERNAME" "name" $creds.name "key" $creds.usernameKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "TH_CQL_PASSWORD" "name" $creds.name "key" $creds.passwordKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "TH_ADMIN_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "TH_ADMIN_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "TH_SOCTALK_API_TOKEN" "name" $boot.name "key" $boot.apiTokenKey) | nindent 12 }}
            - name: TH_STORAGE_PATH
              value: /data/files
            - name: TH_CORTEX_URL
              value: {{ .cortexUrl | quote }}
            {{- if .cortexInNamespace }}
            {{- include "thehive.secretEnv" (dict "env" "TH_CORTEX_KEY" "name" $c.secrets.cortex.name "key" $c.secrets.cortex.apiKeyKey) | nindent 12 }}
            {{- end }}
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- include "thehive.containerSecurityContext" . | nindent 12 }}
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
            - name: files
              mountPath: /data/files
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: files
          persistentVolumeClaim:
            claimName: thehive-files
        - name: tmp
          emptyDir: {}
{{- end }}

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
apiVersion: v1
kind: Service
metadata:
  name: thehive-headless
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "thehive") | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "thehive.selector" (dict "ctx" . "component" "thehive") | nindent 4 }}
  ports:
    - name: http
      port: {{ $c.ports.http }}
      targetPort: http
---
{{- /* A StatefulSet, not a Deployment: TheHive keeps case attachments on its own volume. */}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: thehive
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "thehive") | nindent 4 }}
spec:
  serviceName: thehive-headless
  replicas: {{ .replicas }}
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
              value: thehive-cassandra
            {{- include "thehive.secretEnv" (dict "env" "TH_CQL_USERNAME" "name" $creds.name "key" $creds.usernameKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "TH_CQL_PASSWORD" "name" $creds.name "key" $creds.passwordKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "TH_ADMIN_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "TH_ADMIN_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
            - name: TH_STORAGE_PATH
              value: /data/files
            - name: TH_CORTEX_URL
              value: {{ .cortexUrl | quote }}
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
        - name: tmp
          emptyDir: {}
  volumeClaimTemplates:
    - metadata:
        name: files
        labels:
          {{- include "thehive.selector" (dict "ctx" . "component" "thehive") | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {{ $c.attachments.size }}
{{- end }}

{{- define "wazuh.dashboard" -}}
{{- $c := .cfg -}}
{{- $s := .sizing.dashboard -}}
{{- $boot := $c.secrets.bootstrap -}}
apiVersion: v1
kind: Service
metadata:
  name: wazuh-dashboard
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "dashboard") | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "wazuh.selector" (dict "ctx" . "component" "dashboard") | nindent 4 }}
  ports:
    - name: https
      port: {{ $c.ports.dashboard }}
      targetPort: https
      protocol: TCP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: wazuh-dashboard
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "dashboard") | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "wazuh.selector" (dict "ctx" . "component" "dashboard") | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "wazuh.labels" (dict "ctx" . "component" "dashboard") | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "wazuh.podSecurityContext" $c.podSecurity | nindent 8 }}
      containers:
        - name: dashboard
          image: {{ include "wazuh.image" $c.images.dashboard }}
          imagePullPolicy: IfNotPresent
          ports:
            - name: https
              containerPort: {{ $c.ports.dashboard }}
              protocol: TCP
          env:
            - name: INDEXER_URL
              value: {{ printf "https://wazuh-indexer:%v" $c.ports.indexer | quote }}
            - name: WAZUH_API_URL
              value: https://wazuh-manager
            - name: API_PORT
              value: {{ $c.ports.api | quote }}
            {{- include "wazuh.secretEnv" (dict "env" "INDEXER_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "wazuh.secretEnv" (dict "env" "INDEXER_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
            {{- include "wazuh.secretEnv" (dict "env" "API_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "wazuh.secretEnv" (dict "env" "API_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- include "wazuh.containerSecurityContext" . | nindent 12 }}
          readinessProbe:
            tcpSocket:
              port: https
            periodSeconds: 10
          livenessProbe:
            tcpSocket:
              port: https
            initialDelaySeconds: 60
            periodSeconds: 20
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: certs
              mountPath: /usr/share/wazuh-dashboard/certs
              readOnly: true
      volumes:
        - name: tmp
          emptyDir: {}
        - name: certs
          secret:
            secretName: {{ $c.secrets.certs.name }}
            defaultMode: 0440
{{- end }}

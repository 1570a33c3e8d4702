{{- define "wazuh.manager" -}}
{{- $c := .cfg -}}
{{- $s := .sizing.manager -}}
{{- $boot := $c.secrets.bootstrap -}}
apiVersion: v1
kind: Service
metadata:
  name: wazuh-manager
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "manager") | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "wazuh.selector" (dict "ctx" . "component" "manager") | nindent 4 }}
  ports:
    - name: api
      port: {{ $c.ports.api }}
      targetPort: api
      protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: wazuh-manager-headless
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "manager") | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "wazuh.selector" (dict "ctx" . "component" "manager") | nindent 4 }}
  ports:
    - name: api
      port: {{ $c.ports.api }}
      targetPort: api
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: wazuh-manager
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "manager") | nindent 4 }}
spec:
  serviceName: wazuh-manager-headless
  replicas: {{ .replicas }}
  podManagementPolicy: Parallel
  selector:
    matchLabels:
      {{- include "wazuh.selector" (dict "ctx" . "component" "manager") | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "wazuh.labels" (dict "ctx" . "component" "manager") | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "wazuh.podSecurityContext" $c.podSecurity | nindent 8 }}
      containers:
        - name: manager
          image: {{ include "wazuh.image" $c.images.manager }}
          imagePullPolicy: IfNotPresent
          ports:
            - name: events
              containerPort: {{ $c.ports.events }}
              protocol: TCP
            - name: enrollment
              containerPort: {{ $c.ports.enrollment }}
              protocol: TCP
            - name: api
              containerPort: {{ $c.ports.api }}
              protocol: TCP
          env:
            - name: INDEXER_URL
              value: {{ printf "https://wazuh-indexer:%v" $c.ports.indexer | quote }}
            {{- include "wazuh.secretEnv" (dict "env" "INDEXER_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "wazuh.secretEnv" (dict "env" "INDEXER_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
            {{- include "wazuh.secretEnv" (dict "env" "API_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "wazuh.secretEnv" (dict "env" "API_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
            {{- /* Agents enroll with this shared secret; rotating it forces re-enrollment (seed 000). */}}
            {{- include "wazuh.secretEnv" (dict "env" "AUTHD_PASS" "name" $c.secrets.authd.name "key" $c.secrets.authd.key) | nindent 12 }}
            - name: SSL_CERTIFICATE_AUTHORITIES_FILE
              value: /etc/wazuh/certs/root-ca.pem
            - name: AUTHD_SSL_CERTIFICATE_FILE
              value: /etc/wazuh/agent-tls/tls.crt
            - name: AUTHD_SSL_KEY_FILE
              value: /etc/wazuh/agent-tls/tls.key
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- include "wazuh.containerSecurityContext" . | nindent 12 }}
          startupProbe:
            tcpSocket:
              port: api
            periodSeconds: 10
            failureThreshold: 60
          readinessProbe:
            tcpSocket:
              port: events
            periodSeconds: 10
          livenessProbe:
            tcpSocket:
              port: api
            periodSeconds: 20
            failureThreshold: 6
          volumeMounts:
            - name: data
              mountPath: /var/ossec/data
            - name: tmp
              mountPath: /tmp
            - name: certs
              mountPath: /etc/wazuh/certs
              readOnly: true
            - name: agent-tls
              mountPath: /etc/wazuh/agent-tls
              readOnly: true
      volumes:
        - name: tmp
          emptyDir: {}
        {{- /* X.509 material must be files; mounted read-only, never copied into values. */}}
        - name: certs
          secret:
            secretName: {{ $c.secrets.certs.name }}
            defaultMode: 0440
        - name: agent-tls
          secret:
            secretName: {{ .agentTlsSecret }}
            defaultMode: 0440
            {{- /* cert-manager may issue after the first start; authd then reloads. */}}
            optional: true
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "wazuh.selector" (dict "ctx" . "component" "manager") | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {{ $s.persistence.size }}
{{- end }}

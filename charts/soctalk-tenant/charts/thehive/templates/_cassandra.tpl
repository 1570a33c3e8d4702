{{- define "thehive.cassandra" -}}
{{- $c := .cfg -}}
{{- $s := .sizing.cassandra -}}
{{- $creds := $c.secrets.cassandra -}}
apiVersion: v1
kind: Service
metadata:
  name: cassandra
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "cassandra") | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "thehive.selector" (dict "ctx" . "component" "cassandra") | nindent 4 }}
  ports:
    - name: cql
      port: {{ $c.ports.cql }}
      targetPort: cql
      protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: cassandra-headless
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "cassandra") | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "thehive.selector" (dict "ctx" . "component" "cassandra") | nindent 4 }}
  ports:
    - name: cql
      port: {{ $c.ports.cql }}
      targetPort: cql
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: cassandra
  labels:
    {{- include "thehive.labels" (dict "ctx" . "component" "cassandra") | nindent 4 }}
spec:
  serviceName: cassandra-headless
  replicas: {{ .replicas }}
  podManagementPolicy: Parallel
  selector:
    matchLabels:
      {{- include "thehive.selector" (dict "ctx" . "component" "cassandra") | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "thehive.labels" (dict "ctx" . "component" "cassandra") | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "thehive.podSecurityContext" $c.podSecurity | nindent 8 }}
      containers:
        - name: cassandra
          image: {{ include "thehive.image" $c.images.cassandra }}
          imagePullPolicy: IfNotPresent
          ports:
            - name: cql
              containerPort: {{ $c.ports.cql }}
              protocol: TCP
          env:
            - name: CASSANDRA_CLUSTER_NAME
              value: thehive
            - name: CASSANDRA_AUTHENTICATOR
              value: PasswordAuthenticator
            {{- include "thehive.secretEnv" (dict "env" "CASSANDRA_USER" "name" $creds.name "key" $creds.usernameKey) | nindent 12 }}
            {{- include "thehive.secretEnv" (dict "env" "CASSANDRA_PASSWORD" "name" $creds.name "key" $creds.passwordKey) | nindent 12 }}
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- include "thehive.containerSecurityContext" . | nindent 12 }}
          startupProbe:
            tcpSocket:
              port: cql
            periodSeconds: 10
            failureThreshold: 60
          readinessProbe:
            tcpSocket:
              port: cql
            periodSeconds: 10
          livenessProbe:
            tcpSocket:
              port: cql
            periodSeconds: 20
            failureThreshold: 6
          volumeMounts:
            - name: data
              mountPath: /bitnami/cassandra
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir: {}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "thehive.selector" (dict "ctx" . "component" "cassandra") | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {{ $s.persistence.size }}
{{- end }}

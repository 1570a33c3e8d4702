{{- define "wazuh.indexer" -}}
{{- $c := .cfg -}}
{{- $s := .sizing.indexer -}}
{{- $boot := $c.secrets.bootstrap -}}
apiVersion: v1
kind: Service
metadata:
  name: wazuh-indexer
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "indexer") | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "wazuh.selector" (dict "ctx" . "component" "indexer") | nindent 4 }}
  ports:
    - name: https
      port: {{ $c.ports.indexer }}
      targetPort: https
      protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: wazuh-indexer-headless
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "indexer") | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "wazuh.selector" (dict "ctx" . "component" "indexer") | nindent 4 }}
  ports:
    - name: https
      port: {{ $c.ports.indexer }}
      targetPort: https
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: wazuh-indexer
  labels:
    {{- include "wazuh.labels" (dict "ctx" . "component" "indexer") | nindent 4 }}
spec:
  serviceName: wazuh-indexer-headless
  replicas: {{ .replicas }}
  podManagementPolicy: Parallel
  selector:
    matchLabels:
      {{- include "wazuh.selector" (dict "ctx" . "component" "indexer") | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "wazuh.labels" (dict "ctx" . "component" "indexer") | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "wazuh.podSecurityContext" $c.podSecurity | nindent 8 }}
      containers:
        - name: indexer
          image: {{ include "wazuh.image" $c.images.indexer }}
          imagePullPolicy: IfNotPresent
          ports:
            - name: https
              containerPort: {{ $c.ports.indexer }}
              protocol: TCP
          env:
            - name: OPENSEARCH_JAVA_OPTS
              value: {{ printf "-Xms%s -Xmx%s" $s.jvm.heap $s.jvm.heap | quote }}
            - name: discovery.type
              value: single-node
            {{- /* No privileged sysctl init container: mmap off avoids vm.max_map_count. */}}
            - name: node.store.allow_mmap
              value: "false"
            {{- include "wazuh.secretEnv" (dict "env" "INDEXER_USERNAME" "name" $boot.name "key" $boot.usernameKey) | nindent 12 }}
            {{- include "wazuh.secretEnv" (dict "env" "INDEXER_PASSWORD" "name" $boot.name "key" $boot.passwordKey) | nindent 12 }}
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- include "wazuh.containerSecurityContext" . | nindent 12 }}
          startupProbe:
            tcpSocket:
              port: https
            periodSeconds: 10
            failureThreshold: 60
          readinessProbe:
            tcpSocket:
              port: https
            periodSeconds: 10
          livenessProbe:
            tcpSocket:
              port: https
            periodSeconds: 20
            failureThreshold: 6
          volumeMounts:
            - name: data
              mountPath: /var/lib/wazuh-indexer
            - name: tmp
              mountPath: /tmp
            - name: certs
              mountPath: /usr/share/wazuh-indexer/certs
              readOnly: true
      volumes:
        - name: tmp
          emptyDir: {}
        - name: certs
          secret:
            secretName: {{ $c.secrets.certs.name }}
            defaultMode: 0440
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "wazuh.selector" (dict "ctx" . "component" "indexer") | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {{ $s.persistence.size }}
{{- end }}

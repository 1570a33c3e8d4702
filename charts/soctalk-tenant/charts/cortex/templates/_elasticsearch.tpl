{{- define "cortex.elasticsearch" -}}
{{- $c := .cfg -}}
{{- $s := .sizing.elasticsearch -}}
apiVersion: v1
kind: Service
metadata:
  name: cortex-elasticsearch
  labels:
    {{- include "cortex.labels" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "cortex.selector" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 4 }}
  ports:
    - name: http
      port: {{ $c.ports.elasticsearch }}
      targetPort: http
      protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: cortex-elasticsearch-headless
  labels:
    {{- include "cortex.labels" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "cortex.selector" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 4 }}
  ports:
    - name: http
      port: {{ $c.ports.elasticsearch }}
      targetPort: http
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: cortex-elasticsearch
  labels:
    {{- include "cortex.labels" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 4 }}
spec:
  serviceName: cortex-elasticsearch-headless
  replicas: {{ .replicas }}
  podManagementPolicy: Parallel
  selector:
    matchLabels:
      {{- include "cortex.selector" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cortex.labels" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "cortex.podSecurityContext" $c.podSecurity | nindent 8 }}
      containers:
        - name: elasticsearch
          image: {{ include "cortex.image" $c.images.elasticsearch }}
          imagePullPolicy: IfNotPresent
          ports:
            - name: http
              containerPort: {{ $c.ports.elasticsearch }}
              protocol: TCP
          env:
            - name: discovery.type
              value: single-node
            - name: ES_JAVA_OPTS
              value: {{ printf "-Xms%s -Xmx%s" $c.elasticsearch.heap $c.elasticsearch.heap | quote }}
            {{- /* No privileged sysctl init container: mmap off avoids vm.max_map_count. */}}
            - name: node.store.allow_mmap
              value: "false"
            {{- /* Reachable only from inside the tenant namespace (NetworkPolicy); Cortex holds the admin credentials. */}}
            - name: xpack.security.enabled
              value: "false"
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- include "cortex.containerSecurityContext" . | nindent 12 }}
          startupProbe:
            tcpSocket:
              port: http
            periodSeconds: 10
            failureThreshold: 60
          readinessProbe:
            httpGet:
              path: /_cluster/health?local=true
              port: http
            periodSeconds: 10
          livenessProbe:
            tcpSocket:
              port: http
            periodSeconds: 20
            failureThreshold: 6
          volumeMounts:
            - name: data
              mountPath: /usr/share/elasticsearch/data
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir: {}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "cortex.selector" (dict "ctx" . "component" "cortex-elasticsearch") | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: {{ $s.persistence.size }}
{{- end }}

{{/*
Names. The release name alone when it already says "korvid" (release korvid: korvid-ingest,
korvid-config, ...), else release-chart.
*/}}
{{- define "korvid.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "korvid.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "korvid.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of a component's objects; call with (dict "root" $ "component" "ingest"). */}}
{{- define "korvid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "korvid.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "korvid.labels" -}}
{{ include "korvid.selectorLabels" . }}
app.kubernetes.io/part-of: korvid
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "korvid.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "korvid.configName" -}}
{{- .Values.config.existingSecret | default (printf "%s-config" (include "korvid.fullname" .)) -}}
{{- end -}}

{{- define "korvid.redactionSecretName" -}}
{{- .Values.ingest.redactionKey.existingSecret | default (printf "%s-ingest" (include "korvid.fullname" .)) -}}
{{- end -}}

{{/*
korvid.toml: what a deployment must get right; config.extraToml adds the rest. Every service
loads and validates the whole file, so it names no file that only one service mounts.
*/}}
{{- define "korvid.toml" -}}
# Written by the korvid Helm chart. Every setting and its default: deploy/korvid.example.toml.
data_dir = "/var/lib/korvid"

[kafka]
bootstrap_servers = {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
topic_prefix = {{ .Values.kafka.topicPrefix | quote }}
group_prefix = {{ .Values.kafka.groupPrefix | quote }}
create_topics = {{ .Values.kafka.createTopics }}
partitions = {{ .Values.kafka.partitions | int }}
replication_factor = {{ .Values.kafka.replicationFactor | int }}
{{- with .Values.kafka.schemaRegistryUrl }}
schema_registry_url = {{ . | quote }}
{{- end }}

[kafka.security]
protocol = {{ .Values.kafka.security.protocol | quote }}
{{- with .Values.kafka.security.saslMechanism }}
sasl_mechanism = {{ . | quote }}
{{- end }}
{{- with .Values.kafka.security.username }}
username = {{ . | quote }}
{{- end }}
{{- if has .Values.kafka.security.protocol (list "ssl" "sasl_ssl") }}
verify_hostname = {{ .Values.kafka.security.verifyHostname }}
{{- end }}

[kafka.client]
{{- range $key, $value := .Values.kafka.client }}
{{- /* librdkafka takes every property as a string; YAML numbers arrive as floats. */}}
{{ $key | quote }} = {{ if kindIs "float64" $value }}{{ $value | int64 | toString | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}

[telemetry]
listen = "0.0.0.0:{{ .Values.ports.metrics | int }}"
log_format = {{ .Values.telemetry.logFormat | quote }}
log_level = {{ .Values.telemetry.logLevel | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
otlp_endpoint = {{ . | quote }}
{{- end }}

[ingest]
cluster = {{ .Values.ingest.cluster | quote }}

[ingest.audit_webhook]
listen = "0.0.0.0:{{ .Values.ports.webhook | int }}"
path = {{ .Values.ingest.webhook.path | quote }}

[ingest.kubernetes]
enabled = {{ .Values.ingest.kubernetes.enabled }}
extra_kinds = [{{ range $i, $kind := .Values.ingest.kubernetes.extraKinds }}{{ if $i }}, {{ end }}{{ $kind | quote }}{{ end }}]
{{- with .Values.config.extraToml }}

{{ . }}
{{- end }}
{{- end -}}

{{/*
Kafka's secrets, the same in every pod: the SASL password as a variable from its Secret, the CA
and the client certificate as files from mounted Secrets, named by variables (korvid.toml names
no file, so it stays valid wherever it is loaded).
*/}}
{{- define "korvid.kafkaEnv" -}}
{{- if .Values.kafka.security.passwordSecret }}
- name: KORVID__KAFKA__SECURITY__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.security.passwordSecret }}
      key: {{ .Values.kafka.security.passwordKey }}
{{- end }}
{{- if .Values.kafka.security.caSecret }}
- name: KORVID__KAFKA__SECURITY__CA_FILE
  value: /etc/korvid/kafka-ca/{{ .Values.kafka.security.caKey }}
{{- end }}
{{- if .Values.kafka.security.clientCertSecret }}
- name: KORVID__KAFKA__SECURITY__CERT_FILE
  value: /etc/korvid/kafka-client/tls.crt
- name: KORVID__KAFKA__SECURITY__KEY_FILE
  value: /etc/korvid/kafka-client/tls.key
{{- end }}
{{- end -}}

{{- define "korvid.kafkaMounts" -}}
{{- if .Values.kafka.security.caSecret }}
- name: kafka-ca
  mountPath: /etc/korvid/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.security.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/korvid/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{- define "korvid.kafkaVolumes" -}}
{{- if .Values.kafka.security.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.security.caSecret }}
{{- end }}
{{- if .Values.kafka.security.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.security.clientCertSecret }}
{{- end }}
{{- end -}}

{{/*
The telemetry server's access (telemetry.tls, telemetry.bearerTokenSecret), the same in every
pod: certificate, key, client CA and token as files from mounted Secrets, named by variables.
*/}}
{{- define "korvid.telemetryEnv" -}}
{{- $t := .Values.telemetry -}}
{{- if and $t.tls.clientCaSecret (not $t.tls.secretName) }}
{{- fail "telemetry.tls.clientCaSecret needs telemetry.tls.secretName" }}
{{- end }}
{{- if and $t.probesRequireToken (not $t.bearerTokenSecret) }}
{{- fail "telemetry.probesRequireToken needs telemetry.bearerTokenSecret" }}
{{- end }}
{{- if $t.tls.secretName }}
- name: KORVID__TELEMETRY__TLS__CERT_FILE
  value: /etc/korvid/telemetry-tls/tls.crt
- name: KORVID__TELEMETRY__TLS__KEY_FILE
  value: /etc/korvid/telemetry-tls/tls.key
{{- end }}
{{- if $t.tls.clientCaSecret }}
- name: KORVID__TELEMETRY__TLS__CLIENT_CA_FILE
  value: /etc/korvid/telemetry-client-ca/{{ $t.tls.clientCaKey }}
{{- end }}
{{- if $t.bearerTokenSecret }}
- name: KORVID__TELEMETRY__BEARER_TOKEN_FILE
  value: /etc/korvid/telemetry-token/{{ $t.bearerTokenKey }}
{{- end }}
{{- if $t.probesRequireToken }}
- name: KORVID__TELEMETRY__PROBES_REQUIRE_TOKEN
  value: "true"
{{- end }}
{{- end -}}

{{- define "korvid.telemetryMounts" -}}
{{- if .Values.telemetry.tls.secretName }}
- name: telemetry-tls
  mountPath: /etc/korvid/telemetry-tls
  readOnly: true
{{- end }}
{{- if .Values.telemetry.tls.clientCaSecret }}
- name: telemetry-client-ca
  mountPath: /etc/korvid/telemetry-client-ca
  readOnly: true
{{- end }}
{{- if .Values.telemetry.bearerTokenSecret }}
- name: telemetry-token
  mountPath: /etc/korvid/telemetry-token
  readOnly: true
{{- end }}
{{- end -}}

{{- define "korvid.telemetryVolumes" -}}
{{- with .Values.telemetry.tls.secretName }}
- name: telemetry-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .Values.telemetry.tls.clientCaSecret }}
- name: telemetry-client-ca
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .Values.telemetry.bearerTokenSecret }}
- name: telemetry-token
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{/*
A probe of the telemetry server; call with (dict "root" $ "path" "/healthz"). The kubelet can
present neither a client certificate nor a token from a Secret: with telemetry.tls.clientCaSecret
or telemetry.probesRequireToken it checks that the port accepts connections, nothing more.
Otherwise an HTTP GET without headers (the probes stay open when only /metrics takes the token),
over HTTPS when telemetry.tls is on (the kubelet does not verify the certificate).
*/}}
{{- define "korvid.telemetryProbe" -}}
{{- $t := .root.Values.telemetry -}}
{{- if or $t.tls.clientCaSecret $t.probesRequireToken }}
tcpSocket:
  port: metrics
{{- else }}
httpGet:
  path: {{ .path }}
  port: metrics
  {{- if $t.tls.secretName }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end -}}

{{/* prometheus.io/* annotations of every pod (metrics.podAnnotations). */}}
{{- define "korvid.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | int | quote }}
prometheus.io/path: /metrics
{{- if .Values.telemetry.tls.secretName }}
prometheus.io/scheme: https
{{- end }}
{{- end -}}

{{/*
One service's Deployment. Call with a dict:
  root        $
  component   ingest, enrich, detect, notify or lake
  values      the component's values (replicas, resources)
  replicas    false to leave the count to an autoscaler
  token       mount the service account token (ingest's watchers only)
  env, ports, mounts, volumes, strategy   extra YAML, already indented to their place
*/}}
{{- define "korvid.deployment" -}}
{{- $root := .root -}}
{{- $fullname := include "korvid.fullname" $root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}-{{ .component }}
  labels:
    {{- include "korvid.labels" . | nindent 4 }}
spec:
  {{- if .replicas }}
  replicas: {{ .values.replicas | int }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with .strategy }}
  strategy:
    {{- . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "korvid.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "korvid.labels" . | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- if not $root.Values.config.existingSecret }}
        checksum/config: {{ include "korvid.toml" $root | sha256sum }}
        {{- end }}
        {{- if $root.Values.metrics.podAnnotations }}
        {{- include "korvid.scrapeAnnotations" $root | nindent 8 }}
        {{- end }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $fullname }}-{{ .component }}
      automountServiceAccountToken: {{ .token }}
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds | int }}
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: korvid
          image: {{ include "korvid.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ .component | quote }}]
          env:
            - name: KORVID_CONFIG
              value: /etc/korvid/config/korvid.toml
            {{- with (include "korvid.kafkaEnv" $root | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with (include "korvid.telemetryEnv" $root | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $root.Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $root.Values.ports.metrics | int }}
              protocol: TCP
            {{- with .ports }}
            {{- . | nindent 12 }}
            {{- end }}
          livenessProbe:
            {{- include "korvid.telemetryProbe" (dict "root" $root "path" "/healthz") | trim | nindent 12 }}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            {{- include "korvid.telemetryProbe" (dict "root" $root "path" "/readyz") | trim | nindent 12 }}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/korvid/config
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- with (include "korvid.kafkaMounts" $root | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with (include "korvid.telemetryMounts" $root | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .mounts }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $root.Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          {{- if $root.Values.config.existingSecret }}
          secret:
            secretName: {{ $root.Values.config.existingSecret }}
          {{- else }}
          configMap:
            name: {{ include "korvid.configName" $root }}
          {{- end }}
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
        {{- with (include "korvid.kafkaVolumes" $root | trim) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with (include "korvid.telemetryVolumes" $root | trim) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $root.Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

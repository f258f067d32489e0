{{/* The release's base name, at most 63 characters. */}}
{{- define "smsstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "smsstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "smsstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "smsstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "smsstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smsstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels and selector of one component: (dict "root" $ "component" "worker"). */}}
{{- define "smsstream.componentLabels" -}}
{{ include "smsstream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "smsstream.componentSelector" -}}
{{ include "smsstream.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "smsstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "smsstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "smsstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "smsstream.notifierEnabled" -}}
{{- if or .Values.notifier.alertmanagerUrl .Values.notifier.webhook.url }}true{{ end -}}
{{- end -}}

{{/* Where the image keeps things (the Dockerfile's paths). */}}
{{- define "smsstream.dataDir" -}}/var/lib/smsstream{{- end -}}
{{- define "smsstream.tlsDir" -}}/etc/smsstream/kafka-tls{{- end -}}

{{/* Kafka, security and pseudonym settings, for every smsstream container. */}}
{{- define "smsstream.kafkaEnv" -}}
- name: SMSSTREAM_BROKER
  value: {{ .Values.kafka.brokers | quote }}
- name: SMSSTREAM_APP_ID
  value: {{ .Values.appId | quote }}
- name: SMSSTREAM_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol }}
- name: SMSSTREAM_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: SMSSTREAM_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required with a SASL_* securityProtocol" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: SMSSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if and (hasSuffix "SSL" .Values.kafka.securityProtocol) .Values.kafka.tls.existingSecret }}
- name: SMSSTREAM_KAFKA_SSL_CAFILE
  value: {{ printf "%s/%s" (include "smsstream.tlsDir" .) .Values.kafka.tls.caKey | quote }}
{{- if .Values.kafka.tls.certKey }}
- name: SMSSTREAM_KAFKA_SSL_CERTFILE
  value: {{ printf "%s/%s" (include "smsstream.tlsDir" .) .Values.kafka.tls.certKey | quote }}
- name: SMSSTREAM_KAFKA_SSL_KEYFILE
  value: {{ printf "%s/%s" (include "smsstream.tlsDir" .) .Values.kafka.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: SMSSTREAM_KAFKA_SSL_CHECK_HOSTNAME
  value: {{ .Values.kafka.tls.checkHostname | quote }}
{{- end }}
{{- end -}}

{{- define "smsstream.pseudonymEnv" -}}
- name: SMSSTREAM_PSEUDONYM_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "pseudonymKey.existingSecret is required: the name of a Secret holding the pseudonym key" .Values.pseudonymKey.existingSecret }}
      key: {{ .Values.pseudonymKey.key }}
{{- end -}}

{{/* The volume and mount of the Kafka TLS Secret, when there is one. */}}
{{- define "smsstream.tlsVolume" -}}
{{- if and (hasSuffix "SSL" .Values.kafka.securityProtocol) .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "smsstream.tlsMount" -}}
{{- if and (hasSuffix "SSL" .Values.kafka.securityProtocol) .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ include "smsstream.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The pod-level settings every smsstream pod shares. */}}
{{- define "smsstream.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* The release's base name: <release>-kiln, or the release name when it contains "kiln". */}}
{{- define "kiln.fullname" -}}
{{- if contains "kiln" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-kiln" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kiln.labels" -}}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "kiln.selector" (list . "web") */}}
{{- define "kiln.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: kiln
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kiln.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kiln.secretName" -}}
{{- .Values.secret.existingSecret | default (printf "%s-secrets" (include "kiln.fullname" .)) -}}
{{- end -}}

{{- define "kiln.webUrl" -}}
{{- .Values.webUrl | default (printf "http://%s-web:%v" (include "kiln.fullname" .) .Values.web.service.port) -}}
{{- end -}}

{{/* One environment variable from a key of the Secret. */}}
{{- define "kiln.secretEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "kiln.secretName" (index . 0) }}
      key: {{ index . 1 }}
{{- end -}}

{{/* The pod's name, for --name. */}}
{{- define "kiln.podNameEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* What the coordinator and web need: the database, the bus, Redis and the bucket. */}}
{{- define "kiln.serverEnv" -}}
{{ include "kiln.secretEnv" (list . "KILN_DATABASE_URL") }}
{{ include "kiln.secretEnv" (list . "KILN_AMQP_URL") }}
{{ include "kiln.secretEnv" (list . "KILN_REDIS_URL") }}
{{ include "kiln.secretEnv" (list . "KILN_CACHE_STORAGE") }}
{{ include "kiln.secretEnv" (list . "AWS_ACCESS_KEY_ID") }}
{{ include "kiln.secretEnv" (list . "AWS_SECRET_ACCESS_KEY") }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kiln.configVolume" -}}
- name: config
  configMap:
    name: {{ include "kiln.fullname" . }}-config
{{- end -}}

{{- define "kiln.configMount" -}}
- name: config
  mountPath: /etc/kiln
  readOnly: true
{{- end -}}

{{/* Scheduling and resources of one component: include "kiln.podExtras" .Values.web */}}
{{- define "kiln.podExtras" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

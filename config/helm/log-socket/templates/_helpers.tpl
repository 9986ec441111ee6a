{{/* Name of the release's objects. */}}
{{- define "log-socket.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "log-socket.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "log-socket.labels" -}}
{{ include "log-socket.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "log-socket.ingestUrl" -}}
{{- if .Values.ingest.url -}}
{{- .Values.ingest.url -}}
{{- else -}}
{{- printf "http://%s.%s.svc:10000" (include "log-socket.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

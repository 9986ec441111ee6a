{{/* The chart's name, or nameOverride. */}}
{{- define "log-socket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the release's objects: fullnameOverride, else RELEASE-NAME (RELEASE when it
contains the name already). */}}
{{- define "log-socket.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "log-socket.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "log-socket.selectorLabels" -}}
app.kubernetes.io/name: {{ include "log-socket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "log-socket.labels" -}}
{{ include "log-socket.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The ServiceAccount the service (and its hook and test pods) run as. */}}
{{- define "log-socket.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "log-socket.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is needed when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image: repository@digest when a digest is given (it wins over the tag), else
repository:tag (the chart's appVersion by default). */}}
{{- define "log-socket.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The listener port's scheme, as the API server's service proxy names it. */}}
{{- define "log-socket.apiScheme" -}}
{{- if eq .Values.api.tls "none" -}}http{{- else -}}https{{- end -}}
{{- end -}}

{{- define "log-socket.ingestUrl" -}}
{{- if .Values.ingest.url -}}
{{- .Values.ingest.url -}}
{{- else -}}
{{- printf "http://%s.%s.svc:10000" (include "log-socket.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object: the manifests' part-of plus Helm's bookkeeping. Selectors keep
     only app.kubernetes.io/name, as in manifests/. */}}
{{- define "kvsched.labels" -}}
app.kubernetes.io/part-of: kvsched
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The kvsched image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "kvsched.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* http or https, with tls.enabled. */}}
{{- define "kvsched.extenderScheme" -}}
{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}


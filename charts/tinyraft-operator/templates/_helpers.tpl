{{/* The release-scoped name of every object of the chart (52 characters at most: some objects add a suffix). */}}
{{- define "tinyraft-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tinyraft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tinyraft-operator.labels" -}}
{{ include "tinyraft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tinyraft
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tinyraft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tinyraft-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: set the name of an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, the tag defaulting to the chart's appVersion (the package version). */}}
{{- define "tinyraft-operator.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{- define "tinyraft-operator.operatorImage" -}}
{{- include "tinyraft-operator.image" (dict "repository" .Values.image.repository "tag" .Values.image.tag "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "tinyraft-operator.sidecarImage" -}}
{{- include "tinyraft-operator.image" (dict "repository" .Values.sidecarImage.repository "tag" .Values.sidecarImage.tag "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "tinyraft-operator.peeringName" -}}
{{- include "tinyraft-operator.fullname" . -}}
{{- end -}}

{{/* Chart name, overridable. */}}
{{- define "imagebuild.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name alone when it already contains the chart
name (e.g. release "imagebuild"), so objects are not called imagebuild-imagebuild.
*/}}
{{- define "imagebuild.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imagebuild.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "imagebuild.labels" -}}
helm.sh/chart: {{ include "imagebuild.chart" . }}
{{ include "imagebuild.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the controller Pods; never change them (Deployment selectors are immutable). */}}
{{- define "imagebuild.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagebuild.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "imagebuild.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imagebuild.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when leader election runs: asked for, or forced by more than one replica. */}}
{{- define "imagebuild.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "imagebuild.leaseName" -}}
{{- default (include "imagebuild.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* repository@digest when a digest is given, else repository:tag (default appVersion). */}}
{{- define "imagebuild.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The reader Pods' image: pvcContexts.reader.image, or the controller's own. */}}
{{- define "imagebuild.readerImage" -}}
{{- $reader := .Values.pvcContexts.reader.image }}
{{- if not $reader.repository }}
{{- include "imagebuild.image" . }}
{{- else if $reader.digest }}
{{- printf "%s@%s" $reader.repository $reader.digest }}
{{- else }}
{{- printf "%s:%s" $reader.repository (default .Chart.AppVersion $reader.tag) }}
{{- end }}
{{- end }}

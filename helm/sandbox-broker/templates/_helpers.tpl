{{/* Chart name. */}}
{{- define "sbx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "sbx.fullname" -}}
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

{{/* Labels on every object, without the component. */}}
{{- define "sbx.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sbx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sandbox-broker
{{- end }}

{{/* Labels on the broker's objects. */}}
{{- define "sbx.labels" -}}
{{ include "sbx.baseLabels" . }}
app.kubernetes.io/component: broker
{{- end }}

{{/* Labels selecting the broker pods. */}}
{{- define "sbx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sbx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "sbx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sbx.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of the RayJobs and SME job pods. */}}
{{- define "sbx.jobsNamespace" -}}
{{- default .Release.Namespace .Values.kuberay.namespace }}
{{- end }}

{{/* The broker's URL as job pods reach it: the code archives' capability URLs start with it. */}}
{{- define "sbx.publicUrl" -}}
{{- default (printf "http://%s.%s.svc.cluster.local:%d" (include "sbx.fullname" .) .Release.Namespace (int .Values.service.port)) .Values.jobs.archive.publicUrl }}
{{- end }}

{{/* The image reference. */}}
{{- define "sbx.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret holding the database URL, and its key. */}}
{{- define "sbx.databaseSecret" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}{{ else }}{{ include "sbx.fullname" . }}-database{{ end }}
{{- end }}
{{- define "sbx.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{/* Secret holding the S3 credentials, and its keys. */}}
{{- define "sbx.s3Secret" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecret }}{{ else }}{{ include "sbx.fullname" . }}-s3{{ end }}
{{- end }}
{{- define "sbx.s3AccessKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.accessKeyKey }}{{ else }}accessKey{{ end }}
{{- end }}
{{- define "sbx.s3SecretKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.secretKeyKey }}{{ else }}secretKey{{ end }}
{{- end }}

{{/* Secret holding the Ray token, and its key. */}}
{{- define "sbx.raySecret" -}}
{{- if .Values.ray.existingSecret }}{{ .Values.ray.existingSecret }}{{ else }}{{ include "sbx.fullname" . }}-ray{{ end }}
{{- end }}
{{- define "sbx.raySecretKey" -}}
{{- if .Values.ray.existingSecret }}{{ .Values.ray.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Secret holding the signing key, and its key. */}}
{{- define "sbx.signingKeySecret" -}}
{{- if .Values.signingKey.existingSecret }}{{ .Values.signingKey.existingSecret }}{{ else }}{{ include "sbx.fullname" . }}-signing-key{{ end }}
{{- end }}
{{- define "sbx.signingKeySecretKey" -}}
{{- if .Values.signingKey.existingSecret }}{{ .Values.signingKey.existingSecretKey }}{{ else }}broker.pem{{ end }}
{{- end }}

{{- define "sbx.kekSecret" -}}
{{- if .Values.kek.existingSecret }}{{ .Values.kek.existingSecret }}{{ else }}{{ include "sbx.fullname" . }}-kek{{ end }}
{{- end }}
{{- define "sbx.kekSecretKey" -}}
{{- if .Values.kek.existingSecret }}{{ .Values.kek.existingSecretKey }}{{ else }}kek{{ end }}
{{- end }}

{{/* Annotations making a chart-created Secret exist before the migrations hook and survive upgrades. */}}
{{- define "sbx.hookSecretAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: "-10"
helm.sh/hook-delete-policy: before-hook-creation
helm.sh/resource-policy: keep
{{- end }}

{{/* Check values that would make a broken release. */}}
{{- define "sbx.validate" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.existingSecret (a Secret with the PostgreSQL URL) or database.url" }}
{{- end }}
{{- if and .Values.database.url (not (hasPrefix "postgresql" .Values.database.url)) }}
{{- fail "database.url must be a PostgreSQL URL (postgresql://...): replicas share one PostgreSQL" }}
{{- end }}
{{- if and (not .Values.s3.existingSecret) (or (not .Values.s3.accessKey) (not .Values.s3.secretKey)) }}
{{- fail "set s3.existingSecret, or both s3.accessKey and s3.secretKey" }}
{{- end }}
{{- if has .Values.s3.secretKey (list "minioadmin" "changeme" "change-me" "password" "secret" "admin") }}
{{- fail "s3.secretKey is a well-known default; use a real credential" }}
{{- end }}
{{- if not (has .Values.config.compute (list "kuberay" "ray")) }}
{{- fail "config.compute must be kuberay or ray on Kubernetes" }}
{{- end }}
{{- if and (eq .Values.config.compute "ray") (not .Values.ray.address) }}
{{- fail "config.compute=ray needs ray.address" }}
{{- end }}
{{- end }}

{{/*
Names, labels and small computed values shared by the templates.
*/}}

{{- define "openspeedy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openspeedy.fullname" -}}
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

{{- define "openspeedy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openspeedy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openspeedy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openspeedy.labels" -}}
helm.sh/chart: {{ include "openspeedy.chart" . }}
{{ include "openspeedy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference-server
app.kubernetes.io/part-of: openspeedy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "openspeedy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "openspeedy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "openspeedy.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The claim the model repository lives on (type persistentVolumeClaim). */}}
{{- define "openspeedy.claimName" -}}
{{- .Values.modelRepository.persistentVolumeClaim.existingClaim | default (printf "%s-models" (include "openspeedy.fullname" .)) }}
{{- end }}

{{/* The repository's folder inside the model volume; the export needs a folder of its own. */}}
{{- define "openspeedy.repositorySubPath" -}}
{{- $subPath := .Values.modelRepository.subPath | default "" | trimPrefix "/" | trimSuffix "/" }}
{{- if and .Values.modelRepository.export.enabled (not $subPath) }}
{{- $subPath = "repository" }}
{{- end }}
{{- $subPath }}
{{- end }}

{{/* Triton's exit timeout: the longest allowed request plus the time to answer it. */}}
{{- define "openspeedy.exitTimeoutSeconds" -}}
{{- add (.Values.triton.maxRequestSeconds | int) 15 }}
{{- end }}

{{/* The pod's grace period: the preStop drain, Triton's exit timeout, then the launcher's own margin. */}}
{{- define "openspeedy.terminationGracePeriodSeconds" -}}
{{- add (.Values.triton.drainSeconds | int) (include "openspeedy.exitTimeoutSeconds" . | int) 30 }}
{{- end }}

{{/* True when the model volume can be mounted on one node only (a surge pod elsewhere would wait forever). */}}
{{- define "openspeedy.singleNodeVolume" -}}
{{- $repo := .Values.modelRepository }}
{{- if and (eq $repo.type "persistentVolumeClaim") (or (has "ReadWriteOnce" $repo.persistentVolumeClaim.accessModes) (has "ReadWriteOncePod" $repo.persistentVolumeClaim.accessModes)) }}true{{ end }}
{{- end }}

{{/* The rollout strategy: .Values.strategy if set; Recreate on a single-node volume; else no surge pod
(it would need a spare GPU), one pod replaced at a time. */}}
{{- define "openspeedy.strategy" -}}
{{- if .Values.strategy }}
{{- toYaml .Values.strategy }}
{{- else if include "openspeedy.singleNodeVolume" . }}
type: Recreate
{{- else }}
type: RollingUpdate
rollingUpdate:
  maxSurge: 0
  maxUnavailable: 1
{{- end }}
{{- end }}

{{/* Fails the render on settings that cannot work together. */}}
{{- define "openspeedy.validate" -}}
{{- $type := .Values.modelRepository.type }}
{{- if not (has $type (list "image" "persistentVolumeClaim" "hostPath" "emptyDir")) }}
{{- fail (printf "modelRepository.type must be image, persistentVolumeClaim, hostPath or emptyDir, not %q" $type) }}
{{- end }}
{{- if and .Values.modelRepository.export.enabled (eq $type "image") }}
{{- fail "modelRepository.export needs a volume to write to: set modelRepository.type to persistentVolumeClaim, hostPath or emptyDir" }}
{{- end }}
{{- if and (eq $type "emptyDir") (not .Values.modelRepository.export.enabled) }}
{{- fail "an emptyDir model repository starts empty: enable modelRepository.export to fill it" }}
{{- end }}
{{- if and .Values.strategy (include "openspeedy.singleNodeVolume" .) (eq (.Values.strategy.type | default "RollingUpdate") "RollingUpdate") }}
{{- $surge := dig "rollingUpdate" "maxSurge" 1 .Values.strategy }}
{{- if not (or (eq (toString $surge) "0") (eq (toString $surge) "0%")) }}
{{- fail "strategy: a ReadWriteOnce model volume mounts on one node, so a surge pod elsewhere never starts: use strategy.type Recreate, rollingUpdate.maxSurge 0, or a ReadWriteMany/ReadOnlyMany claim" }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling: minReplicas is larger than maxReplicas" }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- if and (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable" }}
{{- end }}
{{- if and (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) }}
{{- fail "podDisruptionBudget: set only one of maxUnavailable and minAvailable" }}
{{- end }}
{{- end }}
{{- end }}

{{/* `openspeedy api` (api.enabled): names and labels of its own, so that the server's Service, PDB and
HPA never select its pods. */}}
{{- define "openspeedy.api.fullname" -}}
{{- printf "%s-api" (include "openspeedy.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{- define "openspeedy.api.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-api" (include "openspeedy.name" . | trunc 59 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openspeedy.api.labels" -}}
helm.sh/chart: {{ include "openspeedy.chart" . }}
{{ include "openspeedy.api.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: api
app.kubernetes.io/part-of: openspeedy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The API listens beyond loopback, so it needs keys; its replicas share jobs only through Redis. */}}
{{- define "openspeedy.api.validate" -}}
{{- if not .Values.api.keys.existingSecret }}
{{- fail "api.enabled: name the Secret holding the API keys (api.keys.existingSecret, one key per line): the API refuses to listen beyond loopback without keys" }}
{{- end }}
{{- if and (gt (int .Values.api.replicaCount) 1) (not .Values.redis.existingSecret) }}
{{- fail "api.replicaCount > 1 needs redis.existingSecret: without Redis each replica keeps its own jobs, and a poll that reaches another replica finds none" }}
{{- end }}
{{- end }}

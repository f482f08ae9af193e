{{/* Every helper takes (list $ctx $component): the root context and a component name. */}}

{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.fullname" -}}
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

{{/* Resource name of a component: <fullname>-<component>. */}}
{{- define "conveyor.componentName" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}
{{- printf "%s-%s" (include "conveyor.fullname" $ctx) $component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.selectorLabels" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ include "conveyor.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{- end -}}

{{- define "conveyor.labels" -}}
{{- $ctx := index . 0 -}}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: conveyor
helm.sh/chart: {{ printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "conveyor.image" -}}
{{- $ctx := index . 0 -}}
{{- $image := $ctx.Values.image -}}
{{- if $image.digest -}}
{{ printf "%s@%s" $image.repository $image.digest }}
{{- else -}}
{{ printf "%s:%s" $image.repository (default $ctx.Chart.AppVersion $image.tag) }}
{{- end -}}
{{- end -}}

{{- define "conveyor.serviceAccountName" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.serviceAccount.create -}}
{{- default (include "conveyor.fullname" $ctx) $ctx.Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" $ctx.Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Redis host, port and the Secret holding its password. */}}
{{- define "conveyor.redisHost" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.redis.enabled -}}
{{- include "conveyor.componentName" (list $ctx "redis") -}}
{{- else -}}
{{- required "externalRedis.host is required when redis.enabled is false" $ctx.Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redisPort" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.redis.enabled -}}6379{{- else -}}{{ $ctx.Values.externalRedis.port }}{{- end -}}
{{- end -}}

{{- define "conveyor.redisSecretName" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.redis.enabled -}}
{{- default (include "conveyor.componentName" (list $ctx "redis")) $ctx.Values.redis.auth.existingSecret -}}
{{- else -}}
{{- required "externalRedis.existingSecret is required" $ctx.Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redisSecretKey" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.redis.enabled -}}{{ $ctx.Values.redis.auth.existingSecretPasswordKey }}{{- else -}}{{ $ctx.Values.externalRedis.existingSecretPasswordKey }}{{- end -}}
{{- end -}}

{{- define "conveyor.redisUrl" -}}
{{- $ctx := index . 0 -}}
{{- $scheme := ternary "rediss" "redis" (and (not $ctx.Values.redis.enabled) $ctx.Values.externalRedis.tls) -}}
{{- $db := ternary 0 $ctx.Values.externalRedis.db $ctx.Values.redis.enabled -}}
{{- printf "%s://%s:%s/%v" $scheme (include "conveyor.redisHost" .) (include "conveyor.redisPort" .) $db -}}
{{- end -}}

{{/* Environment shared by every Conveyor container: only CONVEYOR_* settings (a test checks). */}}
{{- define "conveyor.env" -}}
{{- $ctx := index . 0 -}}
- name: CONVEYOR_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "conveyor.redisSecretName" . }}
      key: {{ include "conveyor.redisSecretKey" . }}
- name: CONVEYOR_WEBHOOK__SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ default (include "conveyor.componentName" (list $ctx "webhook")) $ctx.Values.config.webhook.existingSecret }}
      key: {{ $ctx.Values.config.webhook.existingSecretKey }}
{{- if $ctx.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $ctx.Values.otel.endpoint | quote }}
{{- end }}
{{- end -}}

{{/* Restricted Pod Security Standard. */}}
{{- define "conveyor.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "conveyor.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level settings shared by every component. */}}
{{- define "conveyor.podSpecCommon" -}}
{{- $ctx := index . 0 -}}
serviceAccountName: {{ include "conveyor.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- include "conveyor.podSecurityContext" . | nindent 2 }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $ctx.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: {{ $ctx.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "conveyor.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* checkov findings that are deliberate, each with its reason (checkov reads these). */}}
{{- define "conveyor.checkovSkips" -}}
{{- $ctx := index . 0 -}}
checkov.io/skip1: "CKV_K8S_35=Conveyor reads its settings from the environment; the Secret is referenced by name, never inlined"
{{- if not $ctx.Values.image.digest }}
checkov.io/skip2: "CKV_K8S_43=pin by digest with image.digest; tags are supported for dev installs"
checkov.io/skip3: "CKV_K8S_15=IfNotPresent with immutable tags or digests; image.pullPolicy overrides it"
{{- end }}
{{- end -}}

{{/* Checksum of everything a pod reads from config, so a change rolls the pods. */}}
{{- define "conveyor.configChecksum" -}}
{{- $ctx := index . 0 -}}
checksum/config: {{ include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | sha256sum }}
checksum/secrets: {{ include (print $ctx.Template.BasePath "/secrets.yaml") $ctx | sha256sum }}
{{- end -}}

{{/* The Secret holding the API keys file: the user's, or the chart's own. */}}
{{- define "conveyor.apiKeysSecretName" -}}
{{- $ctx := index . 0 -}}
{{- default (include "conveyor.componentName" (list $ctx "api-keys")) $ctx.Values.config.auth.existingSecret -}}
{{- end -}}

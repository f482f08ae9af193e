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

{{/* Labels of objects' own metadata: version labels belong here, never on pod templates. */}}
{{- define "conveyor.labels" -}}
{{- $ctx := index . 0 -}}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: conveyor
helm.sh/chart: {{ printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of pod templates: no version or chart label, so a chart bump rolls no pod by
itself (Redis above all); podLabels added (the schema refuses the chart's own keys). */}}
{{- define "conveyor.podLabels" -}}
{{- $ctx := index . 0 -}}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/part-of: conveyor
{{- with $ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The values block of a component (api, worker-<tier>, beat, exporter, redis, flower);
empty for others. */}}
{{- define "conveyor.componentValues" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}
{{- $values := dict -}}
{{- if hasPrefix "worker-" $component -}}
{{- $values = index $ctx.Values.workers (trimPrefix "worker-" $component) | default dict -}}
{{- else if has $component (list "api" "beat" "exporter" "redis" "flower") -}}
{{- $values = index $ctx.Values $component -}}
{{- end -}}
{{- toYaml $values -}}
{{- end -}}

{{/* An image reference: global.imageRegistry replaces the registry host of the repository
(docker.io/library/redis -> <registry>/library/redis), a digest wins over the tag. */}}
{{- define "conveyor.image" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}
{{- $image := $ctx.Values.image -}}
{{- $tag := default $ctx.Chart.AppVersion $ctx.Values.image.tag -}}
{{- if eq $component "redis" -}}
{{- $image = $ctx.Values.redis.image -}}{{- $tag = $image.tag -}}
{{- else if eq $component "flower" -}}
{{- $image = $ctx.Values.flower.image -}}{{- $tag = $image.tag -}}
{{- end -}}
{{- $repository := $image.repository -}}
{{- with $ctx.Values.global.imageRegistry -}}
{{- $parts := splitList "/" $repository -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $parts = rest $parts -}}
{{- end -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (join "/" $parts) -}}
{{- end -}}
{{- if $image.digest -}}
{{ printf "%s@%s" $repository $image.digest }}
{{- else -}}
{{ printf "%s:%s" $repository $tag }}
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
{{- else if $ctx.Values.externalRedis.sentinel.addresses -}}
{{- /* Found through the Sentinels: the URL's host is not used. */ -}}
{{- default "sentinel" $ctx.Values.externalRedis.host -}}
{{- else -}}
{{- required "externalRedis.host is required when redis.enabled is false" $ctx.Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{/* "true" when Conveyor finds its primary through Redis Sentinel: the in-chart sentinel
topology, or the Sentinels of an external Redis. */}}
{{- define "conveyor.redisSentinel" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.redis.enabled -}}
{{- if eq $ctx.Values.redis.topology "sentinel" -}}true{{- end -}}
{{- else if $ctx.Values.externalRedis.sentinel.addresses -}}true{{- end -}}
{{- end -}}

{{/* CONVEYOR_REDIS_SENTINEL__ADDRESSES: the in-chart pods by their stable names, or the
external Sentinels. */}}
{{- define "conveyor.redisSentinelAddresses" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.redis.enabled -}}
{{- $name := include "conveyor.componentName" (list $ctx "redis") -}}
{{- $hosts := list -}}
{{- range $i := until 3 -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless.%s.svc:26379" $name $i $name $ctx.Release.Namespace) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- else -}}
{{- join "," $ctx.Values.externalRedis.sentinel.addresses -}}
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

{{/* "true" when Conveyor talks TLS to an external Redis. */}}
{{- define "conveyor.redisTls" -}}
{{- $ctx := index . 0 -}}
{{- if and (not $ctx.Values.redis.enabled) $ctx.Values.externalRedis.tls.enabled -}}true{{- end -}}
{{- end -}}

{{/* The CA bundle of an external Redis, mounted from externalRedis.tls.caSecret. */}}
{{- define "conveyor.redisCaDir" -}}/etc/conveyor/redis-ca{{- end -}}

{{- define "conveyor.redisCaFile" -}}
{{- $ctx := index . 0 -}}
{{- if and (include "conveyor.redisTls" .) $ctx.Values.externalRedis.tls.caSecret -}}
{{- printf "%s/%s" (include "conveyor.redisCaDir" .) $ctx.Values.externalRedis.tls.caSecretKey -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.redisUsername" -}}
{{- $ctx := index . 0 -}}
{{- if not $ctx.Values.redis.enabled -}}{{ $ctx.Values.externalRedis.username }}{{- end -}}
{{- end -}}

{{- define "conveyor.redisUrl" -}}
{{- $ctx := index . 0 -}}
{{- $scheme := ternary "rediss" "redis" (eq (include "conveyor.redisTls" .) "true") -}}
{{- $db := ternary 0 $ctx.Values.externalRedis.db $ctx.Values.redis.enabled -}}
{{- printf "%s://%s:%s/%v" $scheme (include "conveyor.redisHost" .) (include "conveyor.redisPort" .) $db -}}
{{- end -}}

{{/* Environment shared by every Conveyor container: only CONVEYOR_* settings (a test
checks), OTEL_* and the user's extraEnv. */}}
{{- define "conveyor.env" -}}
{{- $ctx := index . 0 -}}
- name: CONVEYOR_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "conveyor.redisSecretName" . }}
      key: {{ include "conveyor.redisSecretKey" . }}
{{- if and $ctx.Values.redis.enabled (include "conveyor.redisSentinel" .) }}
# The in-chart Sentinels take the Redis password.
- name: CONVEYOR_REDIS_SENTINEL__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "conveyor.redisSecretName" . }}
      key: {{ include "conveyor.redisSecretKey" . }}
{{- else if and (not $ctx.Values.redis.enabled) $ctx.Values.externalRedis.sentinel.existingSecret }}
- name: CONVEYOR_REDIS_SENTINEL__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $ctx.Values.externalRedis.sentinel.existingSecret }}
      key: {{ $ctx.Values.externalRedis.sentinel.existingSecretPasswordKey }}
{{- end }}
{{- with include "conveyor.redisUsername" . }}
- name: CONVEYOR_REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with include "conveyor.redisCaFile" . }}
- name: CONVEYOR_REDIS_CA_FILE
  value: {{ . | quote }}
{{- end }}
{{- if $ctx.Values.config.webhook.enabled }}
- name: CONVEYOR_WEBHOOK__SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ default (include "conveyor.componentName" (list $ctx "webhook")) $ctx.Values.config.webhook.existingSecret }}
      key: {{ $ctx.Values.config.webhook.existingSecretKey }}
{{- end }}
{{- if $ctx.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $ctx.Values.otel.endpoint | quote }}
{{- end }}
{{- with $ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* envFrom of every Conveyor container: the chart's ConfigMap, then the user's sources. */}}
{{- define "conveyor.envFrom" -}}
{{- $ctx := index . 0 -}}
- configMapRef:
    name: {{ include "conveyor.fullname" $ctx }}
{{- with $ctx.Values.envFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volume mounts every Conveyor container shares (the Redis CA, the user's). */}}
{{- define "conveyor.volumeMounts" -}}
{{- $ctx := index . 0 -}}
{{- if include "conveyor.redisCaFile" . }}
- {name: redis-ca, mountPath: {{ include "conveyor.redisCaDir" . }}, readOnly: true}
{{- end }}
{{- with $ctx.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "conveyor.volumes" -}}
{{- $ctx := index . 0 -}}
{{- if include "conveyor.redisCaFile" . }}
- name: redis-ca
  secret:
    secretName: {{ $ctx.Values.externalRedis.tls.caSecret }}
    items: [{key: {{ $ctx.Values.externalRedis.tls.caSecretKey }}, path: {{ $ctx.Values.externalRedis.tls.caSecretKey }}}]
    defaultMode: 0444
{{- end }}
{{- with $ctx.Values.extraVolumes }}
{{ toYaml . }}
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

{{/* Scheduling: a component's own nodeSelector, affinity and tolerations, else the global ones. */}}
{{- define "conveyor.scheduling" -}}
{{- $ctx := index . 0 -}}
{{- $own := include "conveyor.componentValues" . | fromYaml -}}
{{- with (default $ctx.Values.nodeSelector $own.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $ctx.Values.affinity $own.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $ctx.Values.tolerations $own.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every component. */}}
{{- define "conveyor.podSpecCommon" -}}
{{- $ctx := index . 0 -}}
serviceAccountName: {{ include "conveyor.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- include "conveyor.podSecurityContext" . | nindent 2 }}
{{- include "conveyor.scheduling" . }}
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

{{/* The chart's ConfigMap data (configmap.yaml renders it; its hash rolls the pods). */}}
{{- define "conveyor.configData" -}}
{{- $ctx := index . 0 -}}
{{- with $ctx.Values -}}
CONVEYOR_REDIS_URL: {{ include "conveyor.redisUrl" $ | quote }}
CONVEYOR_LOG_LEVEL: {{ .config.logLevel | quote }}
CONVEYOR_LOG_FORMAT: {{ .config.logFormat | quote }}
CONVEYOR_TASK_MODULES: {{ .config.taskModules | toJson | quote }}
CONVEYOR_REDIS_DURABILITY_CHECK: {{ .config.redisDurabilityCheck | quote }}
{{- $sentinel := include "conveyor.redisSentinel" $ }}
{{- if $sentinel }}
CONVEYOR_REDIS_SENTINEL__ADDRESSES: {{ include "conveyor.redisSentinelAddresses" $ | quote }}
CONVEYOR_REDIS_SENTINEL__MASTER_NAME: {{ ternary .redis.sentinel.masterName .externalRedis.sentinel.masterName .redis.enabled | quote }}
{{- if and (not .redis.enabled) .externalRedis.sentinel.tls }}
CONVEYOR_REDIS_SENTINEL__TLS: "true"
{{- end }}
{{- end }}
{{- $ack := int .config.replicatedAck.replicas }}
CONVEYOR_REDIS_REPLICATION__ACK_REPLICAS: {{ ternary (ternary 1 0 (eq $sentinel "true")) $ack (lt $ack 0) | int | quote }}
CONVEYOR_REDIS_REPLICATION__ACK_TIMEOUT_MS: {{ .config.replicatedAck.timeoutMs | int | quote }}
CONVEYOR_JOBS__RETENTION_SECONDS: {{ .config.retentionSeconds | int | quote }}
CONVEYOR_JOBS__DEAD_LETTER_RETENTION_SECONDS: {{ .config.deadLetterRetentionSeconds | int | quote }}
CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS: {{ .config.visibilityTimeoutSeconds | int | quote }}
CONVEYOR_WORKFLOWS__MAX_STEPS: {{ .config.workflows.maxSteps | int | quote }}
CONVEYOR_WORKFLOWS__MAX_INPUT_BYTES: {{ .config.workflows.maxInputBytes | int64 | quote }}
CONVEYOR_BEAT__LOCK_TIMEOUT_SECONDS: {{ .beat.lockTimeoutSeconds | int | quote }}
{{- with .config.runtimeSchedules }}
CONVEYOR_SCHEDULES__MAX_PER_TENANT: {{ .maxPerTenant | int | quote }}
CONVEYOR_SCHEDULES__MIN_INTERVAL_SECONDS: {{ .minIntervalSeconds | quote }}
CONVEYOR_SCHEDULES__CATCH_UP_GRACE_SECONDS: {{ .catchUpGraceSeconds | quote }}
{{- end }}
{{- with .config.console }}
CONVEYOR_CONSOLE__ENABLED: {{ .enabled | quote }}
CONVEYOR_CONSOLE__SECURE_COOKIE: {{ .secureCookie | quote }}
CONVEYOR_CONSOLE__SESSION_TTL_SECONDS: {{ .sessionTtlSeconds | int | quote }}
CONVEYOR_CONSOLE__AUDIT_MAX_ENTRIES: {{ .auditMaxEntries | int | quote }}
CONVEYOR_CONSOLE__AUDIT_SUBMISSIONS: {{ .auditSubmissions | quote }}
{{- end }}
{{- with .config.flow }}
CONVEYOR_FLOW__TENANT_CONCURRENCY_PER_TIER: {{ .tenantConcurrencyPerTier | int | quote }}
CONVEYOR_FLOW__TENANT_MAX_QUEUED_PER_TIER: {{ .tenantMaxQueuedPerTier | int | quote }}
CONVEYOR_FLOW__TENANT_MAX_DELAYED: {{ .tenantMaxDelayed | int | quote }}
CONVEYOR_FLOW__TENANT_MAX_BYTES: {{ .tenantMaxBytes | int64 | quote }}
{{- end }}
CONVEYOR_METRICS__MULTIPROCESS_DIR: "/tmp/metrics"
CONVEYOR_WORKER__HEARTBEAT_FILE: "/tmp/heartbeat"
CONVEYOR_SCHEDULE_FILE: "/etc/conveyor/schedule.yaml"
CONVEYOR_WORKER__SEND_TASK_EVENTS: {{ .config.workers.sendTaskEvents | toString | quote }}
CONVEYOR_WEBHOOK__ENABLED: {{ .config.webhook.enabled | toString | quote }}
CONVEYOR_WEBHOOK__ALLOWED_NETWORKS: {{ .config.webhook.allowedNetworks | toJson | quote }}
{{- with .config.limits }}
CONVEYOR_LIMITS__RATE_PER_SECOND: {{ .ratePerSecond | toString | quote }}
CONVEYOR_LIMITS__BURST: {{ .burst | int | quote }}
CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__HIGH: {{ .maxQueueDepth.high | int | quote }}
CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__DEFAULT: {{ .maxQueueDepth.default | int | quote }}
CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__LOW: {{ .maxQueueDepth.low | int | quote }}
CONVEYOR_LIMITS__MAX_DELAYED_JOBS: {{ .maxDelayedJobs | int | quote }}
CONVEYOR_LIMITS__MAX_BODY_BYTES: {{ .maxBodyBytes | int | quote }}
{{- end }}
{{- if .config.smtp.host }}
{{- with .config.smtp }}
CONVEYOR_SMTP__HOST: {{ .host | quote }}
CONVEYOR_SMTP__PORT: {{ .port | int | quote }}
CONVEYOR_SMTP__SECURITY: {{ .security | quote }}
CONVEYOR_SMTP__SENDER: {{ .sender | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* beat's schedule file (the schedule ConfigMap). */}}
{{- define "conveyor.scheduleData" -}}
{{- $ctx := index . 0 -}}
{{- dict "schedules" $ctx.Values.config.schedules | toYaml -}}
{{- end -}}

{{/* Pod-template annotations: a checksum of exactly what the pod reads from the chart's
ConfigMaps (never a Secret: the generated ones are random in offline renders, the API keys are
re-read live, and the others are the user's), and the user's podAnnotations. */}}
{{- define "conveyor.podAnnotations" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}
{{- if or (has $component (list "api" "beat" "exporter")) (hasPrefix "worker-" $component) }}
checksum/config: {{ include "conveyor.configData" . | sha256sum }}
{{- end }}
{{- if eq $component "beat" }}
checksum/schedule: {{ include "conveyor.scheduleData" . | sha256sum }}
{{- end }}
{{- with $ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The Secret holding the API keys file: the user's, or the chart's own. */}}
{{- define "conveyor.apiKeysSecretName" -}}
{{- $ctx := index . 0 -}}
{{- default (include "conveyor.componentName" (list $ctx "api-keys")) $ctx.Values.config.auth.existingSecret -}}
{{- end -}}

{{/* "true" on a live cluster (install, upgrade, --dry-run=server), empty when rendering
offline (helm template, lint): the default ServiceAccount of the namespace exists only there. */}}
{{- define "conveyor.liveCluster" -}}
{{- $ctx := index . 0 -}}
{{- if lookup "v1" "ServiceAccount" $ctx.Release.Namespace "default" -}}true{{- end -}}
{{- end -}}

{{/* "true" when worker tiers get KEDA ScaledObjects: keda.enabled true, or auto and the
cluster serves ScaledObjects. Explicit true on a live cluster without KEDA fails here. */}}
{{- define "conveyor.kedaEnabled" -}}
{{- $ctx := index . 0 -}}
{{- $has := $ctx.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject" -}}
{{- $value := $ctx.Values.keda.enabled -}}
{{- if eq (toString $value) "auto" -}}
{{- if $has -}}true{{- end -}}
{{- else if $value -}}
{{- if and (not $has) (include "conveyor.liveCluster" .) -}}
{{- fail "keda.enabled=true but this cluster does not serve keda.sh/v1alpha1 ScaledObjects: install KEDA first, or set keda.enabled=auto (ScaledObjects when KEDA is there, CPU HPAs otherwise) or keda.enabled=false" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

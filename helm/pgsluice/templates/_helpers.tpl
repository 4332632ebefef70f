{{- define "pgsluice.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgsluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Labels of every object. Call with (dict "root" $ "component" "migration"|"rollback").
*/}}
{{- define "pgsluice.componentLabels" -}}
app.kubernetes.io/name: {{ include "pgsluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pgsluice.labels" -}}
{{ include "pgsluice.componentLabels" (dict "root" . "component" "migration") }}
{{- end -}}

{{/*
The image reference: repository:tag, and @digest after it when image.digest is set (the
digest decides what runs; the tag stays for people reading `kubectl get pods`).
*/}}
{{- define "pgsluice.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- if .Values.image.digest -}}
{{- $ref = printf "%s@%s" $ref .Values.image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/*
The migrate Job's name. Mode hook: one stable name (Helm deletes the previous Job first).
Mode job: named after what the Job runs - a short hash of its whole rendered spec (the image
reference and digest, the migrations ConfigMap and migrations.checksum, the fleet's targets,
every setting) - so the same inputs give the same name, and anything that changes the
(immutable) pod template gives a new Job instead of "field is immutable". Not the release
revision: `helm template`, which Argo CD renders with, always says 1. At most 63 characters
(the job-name label Kubernetes puts on its pods).
*/}}
{{- define "pgsluice.migrateJobName" -}}
{{- $base := printf "%s-migrate" (include "pgsluice.fullname" .) -}}
{{- if eq .Values.mode "hook" -}}
{{- $base -}}
{{- else -}}
{{- printf "%s-%s" ($base | trunc 52 | trimSuffix "-") (include "pgsluice.migrateJobSpec" . | sha256sum | trunc 10) -}}
{{- end -}}
{{- end -}}

{{/*
Argo CD's own hook annotations (argocd.hook): a PreSync hook, its delete policy, and a sync
wave (job.annotations' own wins). Call with (dict "root" $ "weight" N).
*/}}
{{- define "pgsluice.argocdHook" -}}
{{- $v := .root.Values -}}
{{- if $v.argocd.hook }}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/hook-delete-policy: {{ $v.argocd.hookDeletePolicy }}
{{- if not (hasKey $v.job.annotations "argocd.argoproj.io/sync-wave") }}
argocd.argoproj.io/sync-wave: {{ .weight | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A duration value (60, 60s, 500ms, 5m, 2h, 1d) in seconds, as a float.
*/}}
{{- define "pgsluice.seconds" -}}
{{- $text := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text -}}
{{- $unit := trimPrefix $number $text -}}
{{- $scale := dict "" 1.0 "s" 1.0 "ms" 0.001 "m" 60.0 "h" 3600.0 "d" 86400.0 -}}
{{- mulf (float64 $number) (get $scale $unit) -}}
{{- end -}}

{{- define "pgsluice.requireBackup" -}}
{{- if kindIs "bool" .Values.backup.require -}}
{{- .Values.backup.require -}}
{{- else -}}
{{- not (empty .Values.backup.url) -}}
{{- end -}}
{{- end -}}

{{/*
Cross-field rules the schema cannot say clearly; each fails the render with the reason.
*/}}
{{- define "pgsluice.validate" -}}
{{- $_ := required "existingSecret is required: a Secret with the database URL under existingSecretKey (create it before installing: a pre-install hook cannot use a Secret of its own release)" .Values.existingSecret -}}
{{- $pfp := .Values.podFailurePolicy -}}
{{- range $list := list "permanentExitCodes" "transientExitCodes" -}}
{{- $prev := 0 -}}
{{- range $code := index $pfp $list -}}
{{- if le (int $code) $prev -}}
{{- fail (printf "podFailurePolicy.%s must be in ascending order without duplicates (Kubernetes rejects other lists): %v" $list (index $pfp $list)) -}}
{{- end -}}
{{- $prev = int $code -}}
{{- end -}}
{{- end -}}
{{- range $p := $pfp.permanentExitCodes -}}
{{- range $t := $pfp.transientExitCodes -}}
{{- if eq (int $p) (int $t) -}}
{{- fail (printf "podFailurePolicy: exit code %v is in both permanentExitCodes and transientExitCodes" $p) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if .Values.fleet.enabled -}}
{{- if and .Values.fleet.targets .Values.fleet.targetsConfigMap -}}
{{- fail "fleet: set fleet.targets or fleet.targetsConfigMap, not both" -}}
{{- end -}}
{{- if not (or .Values.fleet.targets .Values.fleet.targetsConfigMap) -}}
{{- fail "fleet.enabled needs the targets: a list in fleet.targets, or an existing ConfigMap (key targets.txt) named by fleet.targetsConfigMap" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" .Values.fleet.maxFailedIndexes)) (gt (int .Values.fleet.maxFailedIndexes) (int .Values.fleet.shards)) -}}
{{- fail (printf "fleet.maxFailedIndexes (%v) must not be above fleet.shards (%v)" .Values.fleet.maxFailedIndexes .Values.fleet.shards) -}}
{{- end -}}
{{- if .Values.rollback.enabled -}}
{{- fail "rollback.enabled does not work with fleet.enabled: the rollback hook is a single Job without the fleet targets; roll a fleet forward instead" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
podFailurePolicy on pgsluice's exit codes. Call with (dict "root" $ "failAction" "FailJob"|"FailIndex").
*/}}
{{- define "pgsluice.podFailurePolicy" -}}
{{- $pfp := .root.Values.podFailurePolicy -}}
podFailurePolicy:
  rules:
    # Permanent failures (podFailurePolicy.permanentExitCodes): retrying cannot fix them,
    # {{ if eq .failAction "FailIndex" }}fail this shard's index now (the other shards go on).{{ else }}fail the Job now.{{ end }}
    - action: {{ .failAction }}
      onExitCodes:
        containerName: migrate
        operator: In
        values: [{{ join ", " $pfp.permanentExitCodes }}]
    # Transient failures (podFailurePolicy.transientExitCodes): retried, within the backoff limit.
    - action: Count
      onExitCodes:
        containerName: migrate
        operator: In
        values: [{{ join ", " $pfp.transientExitCodes }}]
    # A node drain or eviction does not count against the backoff limit.
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
{{- end -}}

{{/*
The pod template shared by the migrate Job, the fleet's Indexed Job and the rollback hook.
Call with (dict "root" $ "args" (list ...) "component" "migration" "fleet" bool).
*/}}
{{- define "pgsluice.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "pgsluice.componentLabels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- /* Checksums of what the pod reads at start, so that a change of it changes the template (mode job: a new Job). */}}
  {{- $annotations := dict -}}
  {{- with $v.migrations.checksum }}
  {{- $_ := set $annotations "checksum/migrations" . }}
  {{- end }}
  {{- if and .fleet $v.fleet.targets }}
  {{- $_ := set $annotations "checksum/targets" (join "\n" $v.fleet.targets | sha256sum) }}
  {{- end }}
  {{- with merge $annotations $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $v.job.terminationGracePeriodSeconds }}
  {{- with $v.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: migrate
      image: {{ include "pgsluice.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: [{{ range $i, $arg := .args }}{{ if $i }}, {{ end }}{{ $arg | quote }}{{ end }}]
      terminationMessagePolicy: FallbackToLogsOnError
      env:
        - name: DATABASE_URL
          valueFrom:
            secretKeyRef:
              name: {{ $v.existingSecret }}
              key: {{ $v.existingSecretKey }}
        - name: PGSLUICE_MIGRATIONS_DIR
          value: /migrations
        - name: PGSLUICE_HISTORY_TABLE
          value: {{ $v.settings.historyTable | quote }}
        - name: PGSLUICE_WAIT_TIMEOUT
          value: {{ $v.settings.waitTimeout | quote }}
        - name: PGSLUICE_LOCK_TIMEOUT
          value: {{ $v.settings.lockTimeout | quote }}
        - name: PGSLUICE_DDL_LOCK_TIMEOUT
          value: {{ $v.settings.ddlLockTimeout | quote }}
        - name: PGSLUICE_DDL_RETRIES
          value: {{ $v.settings.ddlRetries | quote }}
        - name: PGSLUICE_STATEMENT_TIMEOUT
          value: {{ $v.settings.statementTimeout | quote }}
        - name: PGSLUICE_ALLOW_OUT_OF_ORDER
          value: {{ $v.settings.allowOutOfOrder | quote }}
        - name: PGSLUICE_LOG_FORMAT
          value: {{ $v.settings.logFormat | quote }}
        {{- with $v.settings.unsafeDdl }}
        - name: PGSLUICE_UNSAFE_DDL
          value: {{ . | quote }}
        {{- end }}
        {{- with $v.settings.onDrift }}
        - name: PGSLUICE_ON_DRIFT
          value: {{ . | quote }}
        {{- end }}
        {{- with $v.settings.lockStrategy }}
        - name: PGSLUICE_LOCK_STRATEGY
          value: {{ . | quote }}
        {{- end }}
        {{- if kindIs "bool" $v.settings.strictFuture }}
        - name: PGSLUICE_STRICT_FUTURE
          value: {{ $v.settings.strictFuture | quote }}
        {{- end }}
        {{- range $name, $value := $v.settings.vars }}
        - name: PGSLUICE_VAR_{{ $name }}
          value: {{ $value | quote }}
        {{- end }}
        - name: PGSLUICE_BACKUP_URL
          value: {{ $v.backup.url | default "none" | quote }}
        - name: PGSLUICE_REQUIRE_BACKUP
          value: {{ include "pgsluice.requireBackup" $root | quote }}
        - name: PGSLUICE_BACKUP_VERIFY
          value: {{ $v.backup.verify | quote }}
        {{- with $v.backup.endpoint }}
        - name: PGSLUICE_BACKUP_ENDPOINT
          value: {{ . | quote }}
        {{- end }}
        {{- with $v.backup.region }}
        - name: PGSLUICE_BACKUP_REGION
          value: {{ . | quote }}
        {{- end }}
        {{- if kindIs "bool" $v.backup.pathStyle }}
        - name: PGSLUICE_BACKUP_PATH_STYLE
          value: {{ $v.backup.pathStyle | quote }}
        {{- end }}
        {{- if not (kindIs "invalid" $v.backup.keep) }}
        - name: PGSLUICE_BACKUP_KEEP
          value: {{ $v.backup.keep | quote }}
        {{- end }}
        {{- with $v.backup.maxAge }}
        - name: PGSLUICE_BACKUP_MAX_AGE
          value: {{ . | quote }}
        {{- end }}
        {{- if .fleet }}
        # The shard index is JOB_COMPLETION_INDEX, which Kubernetes sets in an Indexed Job.
        - name: PGSLUICE_TARGETS_FILE
          value: /targets/targets.txt
        - name: PGSLUICE_SHARD_COUNT
          value: {{ $v.fleet.shards | quote }}
        - name: PGSLUICE_PARALLEL
          value: {{ $v.fleet.parallelPerPod | quote }}
        {{- if gt (int $v.fleet.canary) 0 }}
        - name: PGSLUICE_CANARY
          value: {{ $v.fleet.canary | quote }}
        {{- end }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.backup.existingSecret }}
      envFrom:
        - secretRef:
            name: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if $v.migrations.configMap }}
        - name: migrations
          mountPath: /migrations
          readOnly: true
        {{- end }}
        {{- if .fleet }}
        - name: targets
          mountPath: /targets
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if $v.migrations.configMap }}
    - name: migrations
      configMap:
        name: {{ $v.migrations.configMap }}
    {{- end }}
    {{- if .fleet }}
    - name: targets
      configMap:
        name: {{ $v.fleet.targetsConfigMap | default (printf "%s-targets" (include "pgsluice.fullname" $root)) }}
        items:
          - key: targets.txt
            path: targets.txt
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
The migrate Job's spec (the single Job or the fleet's Indexed Job); in mode job its hash names the Job.
*/}}
{{- define "pgsluice.migrateJobSpec" -}}
{{- $fleet := .Values.fleet -}}
{{- if $fleet.enabled }}
# A fleet: one pod per shard of fleet.targets; the shard is JOB_COMPLETION_INDEX.
# No backoffLimit: with backoffLimitPerIndex, Kubernetes defaults it to 2147483647, so
# only the per-index limit counts (job.backoffLimit would cap failures of ALL shards).
completionMode: Indexed
completions: {{ $fleet.shards }}
parallelism: {{ $fleet.parallelism | default $fleet.shards }}
backoffLimitPerIndex: {{ $fleet.backoffLimitPerIndex }}
{{- if not (kindIs "invalid" $fleet.maxFailedIndexes) }}
maxFailedIndexes: {{ $fleet.maxFailedIndexes }}
{{- end }}
{{- else }}
backoffLimit: {{ .Values.job.backoffLimit }}
{{- end }}
activeDeadlineSeconds: {{ .Values.job.activeDeadlineSeconds }}
{{- if not (kindIs "invalid" .Values.job.ttlSecondsAfterFinished) }}
ttlSecondsAfterFinished: {{ .Values.job.ttlSecondsAfterFinished }}
{{- end }}
{{ include "pgsluice.podFailurePolicy" (dict "root" . "failAction" (ternary "FailIndex" "FailJob" $fleet.enabled)) }}
template:
  {{- include "pgsluice.podTemplate" (dict "root" . "args" (list "migrate") "component" "migration" "fleet" $fleet.enabled) | nindent 2 }}
{{- end -}}

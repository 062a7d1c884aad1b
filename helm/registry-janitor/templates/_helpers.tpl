{{/*
Names and labels.
*/}}
{{- define "registry-janitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "registry-janitor.fullname" -}}
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

{{- define "registry-janitor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "registry-janitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "registry-janitor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "registry-janitor.labels" -}}
helm.sh/chart: {{ include "registry-janitor.chart" . }}
{{ include "registry-janitor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: registry-janitor
{{- end }}

{{- define "registry-janitor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "registry-janitor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "registry-janitor.secretName" -}}
{{- default (include "registry-janitor.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "registry-janitor.claimName" -}}
{{- default (printf "%s-data" (include "registry-janitor.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "registry-janitor.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Where the config file lives in the container; JANITOR_CONFIG points here too.
*/}}
{{- define "registry-janitor.configDir" -}}/etc/registry-janitor{{- end }}
{{- define "registry-janitor.configPath" -}}{{ include "registry-janitor.configDir" . }}/janitor.yaml{{- end }}

{{/*
The container port, taken from config.server.bind ("0.0.0.0:8080", "[::]:8080"). A loopback bind
would leave the pod unreachable, so it is refused.
*/}}
{{- define "registry-janitor.port" -}}
{{- $bind := toString (dig "server" "bind" "0.0.0.0:8080" .Values.config) }}
{{- if or (hasPrefix "127." $bind) (hasPrefix "localhost" $bind) (hasPrefix "[::1]" $bind) }}
{{- fail (printf "config.server.bind is %q: in a pod the server must listen on all interfaces, e.g. 0.0.0.0:8080" $bind) }}
{{- end }}
{{- $port := splitList ":" $bind | last }}
{{- if not (regexMatch `^[0-9]+$` $port) }}
{{- fail (printf "config.server.bind is %q: write it as HOST:PORT, e.g. 0.0.0.0:8080" $bind) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
The variables the config's secret keys reference, as a JSON list. Fails on a secret written inline:
the ConfigMap must never carry one. A key ending in _file (a path to a mounted secret) is not a
secret itself and is left alone.
*/}}
{{- define "registry-janitor.secretRefs" -}}
{{- $config := .Values.config | default dict }}
{{- $found := list }}
{{- $checks := list }}
{{- $checks = append $checks (list "storage.password" (dig "storage" "password" "" $config)) }}
{{- $checks = append $checks (list "gitlab.api_token" (dig "gitlab" "api_token" "" $config)) }}
{{- $checks = append $checks (list "gitlab.system_hook_secret" (dig "gitlab" "system_hook_secret" "" $config)) }}
{{- $checks = append $checks (list "server.admin_token" (dig "server" "admin_token" "" $config)) }}
{{- $checks = append $checks (list "server.registry_notification_token" (dig "server" "registry_notification_token" "" $config)) }}
{{- range $i, $project := ($config.projects | default list) }}
{{- $checks = append $checks (list (printf "projects[%d].webhook_secret" $i) (get $project "webhook_secret")) }}
{{- $checks = append $checks (list (printf "projects[%d].registry_token" $i) (get $project "registry_token")) }}
{{- end }}
{{- range $checks }}
{{- $where := index . 0 }}
{{- $value := index . 1 }}
{{- if $value }}
{{- $text := toString $value }}
{{- if not (regexMatch `^\$\{[A-Za-z_][A-Za-z0-9_]*\}$` $text) }}
{{- fail (printf "config.%s holds an inline secret: write it as a ${VAR} reference (for example ${%s}) and give the value in .Values.secrets or in the Secret named by .Values.existingSecret" $where (include "registry-janitor.suggestVar" $where)) }}
{{- end }}
{{- $found = append $found (trimSuffix "}" (trimPrefix "${" $text)) }}
{{- end }}
{{- end }}
{{- /* PostgreSQL's password may sit in storage.url, as //user:${VAR}@ or ?password=${VAR}, never inline. */}}
{{- $url := toString (dig "storage" "url" "" $config) }}
{{- $var := `\$\{[A-Za-z_][A-Za-z0-9_]*\}` }}
{{- if and (regexMatch `^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#:]*:[^/@?#]*@` $url) (not (regexMatch (printf `^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#:]*:%s@` $var) $url)) }}
{{- fail "config.storage.url holds an inline password: write postgresql://user@host:5432/database and give the password in a Secret (storage.existingSecret), or as postgresql://user:${VAR}@host:5432/database with VAR in .Values.secrets or existingSecret" }}
{{- end }}
{{- if and (regexMatch `[?&]password=` $url) (not (regexMatch (printf `[?&]password=%s(&|$)` $var) $url)) }}
{{- fail "config.storage.url holds an inline password=: remove it and give the password in a Secret (storage.existingSecret), or write password=${VAR} with VAR in .Values.secrets or existingSecret" }}
{{- end }}
{{- range (regexFindAll $var $url -1) }}
{{- $found = append $found (trimSuffix "}" (trimPrefix "${" .)) }}
{{- end }}
{{- $found | uniq | toJson }}
{{- end }}

{{- define "registry-janitor.suggestVar" -}}
{{- regexReplaceAll `[^A-Z0-9]+` (upper .) "_" | trimSuffix "_" }}
{{- end }}

{{/*
The variable an ${VAR} reference names ("" when the value is empty).
*/}}
{{- define "registry-janitor.varName" -}}
{{- trimSuffix "}" (trimPrefix "${" (toString (default "" .))) }}
{{- end }}

{{/*
Variables the chart generates when neither `secrets` nor an existing Secret gives them: the two
tokens the janitor itself checks (they are shared with GitLab's and the registry's side afterwards).
*/}}
{{- define "registry-janitor.generatedVars" -}}
{{- $vars := list }}
{{- range (list "admin_token" "registry_notification_token") }}
{{- $var := include "registry-janitor.varName" (dig "server" . "" $.Values.config) }}
{{- if and $var (not (hasKey ($.Values.secrets | default dict) $var)) }}
{{- $vars = append $vars $var }}
{{- end }}
{{- end }}
{{- $vars | toJson }}
{{- end }}

{{/*
The environment every janitor container gets: the config path, one secretKeyRef per secret
variable (so a missing key is named by Kubernetes before the process starts), then extraEnv.
*/}}
{{- define "registry-janitor.env" -}}
{{- $extraNames := list }}
{{- range .Values.extraEnv }}
{{- $extraNames = append $extraNames .name }}
{{- end }}
{{- $vars := include "registry-janitor.secretRefs" . | fromJsonArray }}
{{- if not .Values.existingSecret }}
{{- $vars = concat $vars (keys (.Values.secrets | default dict)) }}
{{- end }}
- name: JANITOR_CONFIG
  value: {{ include "registry-janitor.configPath" . | quote }}
{{- if not (has "JANITOR_LOG_FORMAT" $extraNames) }}
- name: JANITOR_LOG_FORMAT
  value: {{ .Values.logFormat | default "text" | quote }}
{{- end }}
{{- if not (has "JANITOR_LOG_LEVEL" $extraNames) }}
- name: JANITOR_LOG_LEVEL
  value: {{ .Values.logLevel | default "INFO" | quote }}
{{- end }}
{{- range ($vars | uniq | sortAlpha) }}
{{- if not (has . $extraNames) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "registry-janitor.secretName" $ }}
      key: {{ . }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Fails when the chart creates the Secret and a variable the config references has no value, and
when both secret sources are given (the values would be silently ignored).
*/}}
{{- define "registry-janitor.checkSecretValues" -}}
{{- if and .Values.existingSecret .Values.secrets }}
{{- fail "set either existingSecret (a Secret you manage) or secrets (values for a Secret the chart creates), not both" }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- $extraNames := list }}
{{- range .Values.extraEnv }}
{{- $extraNames = append $extraNames .name }}
{{- end }}
{{- $generated := include "registry-janitor.generatedVars" . | fromJsonArray }}
{{- range (include "registry-janitor.secretRefs" . | fromJsonArray) }}
{{- if not (or (hasKey ($.Values.secrets | default dict) .) (has . $generated) (has . $extraNames)) }}
{{- fail (printf "the config references ${%s} but neither .Values.secrets.%s, extraEnv nor existingSecret gives it" . .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when config.storage.url names PostgreSQL (the shared store), "" for SQLite (the default).
*/}}
{{- define "registry-janitor.postgres" -}}
{{- $url := toString (dig "storage" "url" "" (.Values.config | default dict)) }}
{{- if or (hasPrefix "postgresql://" $url) (hasPrefix "postgres://" $url) }}true{{ end }}
{{- end }}

{{/*
The web replicas: replicaCount (the usual chart key) when set, else web.replicaCount.
*/}}
{{- define "registry-janitor.webReplicas" -}}
{{- if kindIs "invalid" .Values.replicaCount }}{{ int (.Values.web.replicaCount | default 1) }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
Where PostgreSQL's password from storage.existingSecret is mounted (config.storage.password_file).
*/}}
{{- define "registry-janitor.passwordDir" -}}/run/secrets/registry-janitor{{- end }}
{{- define "registry-janitor.passwordFile" -}}{{ include "registry-janitor.passwordDir" . }}/postgresql-password{{- end }}

{{/*
The Deployments, as a JSON list of {name, component, replicas}. SQLite: one, named as the release, its pod
running web and worker next to the one database file. PostgreSQL: a web Deployment and a worker Deployment,
each with its own replicas.
*/}}
{{- define "registry-janitor.workloads" -}}
{{- $fullname := include "registry-janitor.fullname" . }}
{{- if include "registry-janitor.postgres" . }}
{{- $base := $fullname | trunc 56 | trimSuffix "-" }}
{{- $web := dict "name" (printf "%s-web" $base) "component" "web" "replicas" (include "registry-janitor.webReplicas" . | int) }}
{{- $worker := dict "name" (printf "%s-worker" $base) "component" "worker" "replicas" (int .Values.worker.replicaCount) }}
{{- list $web $worker | toJson }}
{{- else }}
{{- list (dict "name" $fullname "component" "" "replicas" 1) | toJson }}
{{- end }}
{{- end }}

{{/*
The selector labels of one workload ({root, component}): the release's, plus the component with PostgreSQL.
*/}}
{{- define "registry-janitor.workloadSelectorLabels" -}}
{{ include "registry-janitor.selectorLabels" .root }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Fails on what one SQLite file cannot do (several replicas), and on a PostgreSQL password given twice.
*/}}
{{- define "registry-janitor.checkTopology" -}}
{{- $web := include "registry-janitor.webReplicas" . | int }}
{{- $workers := int (.Values.worker.replicaCount | default 1) }}
{{- $storage := .Values.storage | default dict }}
{{- $config := .Values.config | default dict }}
{{- if not (include "registry-janitor.postgres" .) }}
{{- if or (gt $web 1) (gt $workers 1) }}
{{- fail (printf "web replicas %d (replicaCount or web.replicaCount) and worker.replicaCount %d: SQLite is one file on one volume: several replicas need storage.url: postgresql://... (config.storage.url, a PostgreSQL database you run; see README, Several nodes)" $web $workers) }}
{{- end }}
{{- if $storage.existingSecret }}
{{- fail "storage.existingSecret holds PostgreSQL's password, but config.storage.url is SQLite, which has none: set config.storage.url: postgresql://user@host:5432/database, or remove storage.existingSecret" }}
{{- end }}
{{- else }}
{{- if lt $workers 1 }}
{{- fail "worker.replicaCount must be at least 1: without a worker nothing is planned or untagged" }}
{{- end }}
{{- if and $storage.existingSecret (or (dig "storage" "password" "" $config) (dig "storage" "password_file" "" $config) (regexMatch `^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#:]*:[^/@?#]*@` (toString (dig "storage" "url" "" $config))) (contains "password=" (toString (dig "storage" "url" "" $config)))) }}
{{- fail "PostgreSQL's password is given twice: storage.existingSecret, and config.storage.password, password_file or a password in config.storage.url; keep one" }}
{{- end }}
{{- if and $storage.existingSecret (not $storage.passwordKey) }}
{{- fail "storage.existingSecret is set but storage.passwordKey is empty: name the Secret's key that holds PostgreSQL's password" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The janitor's URL as GitLab and the registry should call it.
*/}}
{{- define "registry-janitor.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- trimSuffix "/" .Values.publicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- printf "%s://%s" (ternary "https" "http" (gt (len .Values.ingress.tls) 0)) $host }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "registry-janitor.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}
{{- end }}

{{/*
One janitor container. Call with (dict "root" $ "name" NAME "command" SUBCOMMAND "http" BOOL "worker" BOOL
"resources" MAP): "http" serves the routes (port, startup and readiness probes), "worker" runs the worker
(its liveness is `registry-janitor worker-health`; else, with "http", GET /healthz).
*/}}
{{- define "registry-janitor.container" -}}
{{- $root := .root }}
- name: {{ .name }}
  image: {{ include "registry-janitor.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["registry-janitor"]
  args: [{{ .command | quote }}]
  env:
    {{- include "registry-janitor.env" $root | trim | nindent 4 }}
  {{- with $root.Values.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .http }}
  ports:
    - name: http
      containerPort: {{ include "registry-janitor.port" $root }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: http
    {{- toYaml $root.Values.probes.startup | nindent 4 }}
  {{- if not .worker }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
    {{- toYaml $root.Values.probes.liveness | nindent 4 }}
  {{- end }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: http
    {{- toYaml $root.Values.probes.readiness | nindent 4 }}
  {{- end }}
  {{- if .worker }}
  livenessProbe:
    exec:
      command: ["registry-janitor", "worker-health"]
    {{- toYaml $root.Values.probes.worker | nindent 4 }}
  {{- end }}
  {{- with .resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: {{ include "registry-janitor.configDir" $root }}
      readOnly: true
    {{- if include "registry-janitor.postgres" $root }}
    {{- if $root.Values.storage.existingSecret }}
    - name: storage-password
      mountPath: {{ include "registry-janitor.passwordDir" $root }}
      readOnly: true
    {{- end }}
    {{- else }}
    - name: data
      mountPath: /data
    {{- end }}
    - name: tmp
      mountPath: /tmp
    {{- with $root.Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

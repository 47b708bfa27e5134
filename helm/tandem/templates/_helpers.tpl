{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
*/}}
{{- define "tandem.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "tandem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object carries.
*/}}
{{- define "tandem.labels" -}}
helm.sh/chart: {{ include "tandem.chart" . }}
{{ include "tandem.baseSelectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tandem
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels shared by every pod of the release (server and migration Job): the NetworkPolicy selects on these.
*/}}
{{- define "tandem.baseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector of the server pods. The component label keeps the migration Job's pod out of the
Service, the PDB and the ServiceMonitor.
*/}}
{{- define "tandem.selectorLabels" -}}
{{ include "tandem.baseSelectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Name of the ServiceAccount the server pods use.
*/}}
{{- define "tandem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tandem.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository@digest when a digest is given, repository:tag otherwise.
*/}}
{{- define "tandem.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret with the database URL; rendering fails when it is not given.
*/}}
{{- define "tandem.databaseSecret" -}}
{{- required "database.existingSecret is required: create a Secret holding the PostgreSQL URL (kubectl create secret generic tandem-db --from-literal=url='postgres://…') and set --set database.existingSecret=tandem-db" .Values.database.existingSecret }}
{{- end }}

{{/*
Name of the Secret with the JWKS verification keys; rendering fails when it is not given.
*/}}
{{- define "tandem.authSecret" -}}
{{- $_ := required "config.TANDEM_AUTH_ISSUER is required: the server checks every token's iss against it (set --set config.TANDEM_AUTH_ISSUER=https://your-idp/realms/clinic)" .Values.config.TANDEM_AUTH_ISSUER }}
{{- $_ := required "config.TANDEM_AUTH_AUDIENCE is required: the server checks every token's aud against it (usually the FHIR base URL)" .Values.config.TANDEM_AUTH_AUDIENCE }}
{{- required "auth.existingSecret is required: tandem refuses to serve on a non-loopback address without token verification keys; create a Secret holding a JWKS document (kubectl create secret generic tandem-auth --from-file=jwks.json=./jwks.json) and set --set auth.existingSecret=tandem-auth" .Values.auth.existingSecret }}
{{- end }}

{{/*
Path of the JWKS file inside the server container.
*/}}
{{- define "tandem.jwksFile" -}}
{{- printf "%s/jwks.json" (.Values.auth.mountPath | trimSuffix "/") }}
{{- end }}

{{/*
A config value as an environment-variable string. Helm reads numbers in values files as
float64, which would print 4194304 as 4.194304e+06: whole numbers are printed as integers.
*/}}
{{- define "tandem.envString" -}}
{{- $v := . }}
{{- if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) }}
{{- int64 $v | toString }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
The non-secret settings, as the ConfigMap's data (only non-empty values; an empty value leaves
the server's default in force). Variables the chart sets itself are refused here.
*/}}
{{- define "tandem.configData" -}}
{{- $reserved := list "TANDEM_LISTEN" "TANDEM_DATABASE_URL" "TANDEM_AUTH_JWKS_FILE" "TANDEM_MIGRATE_ON_START" "TANDEM_DATA_DIR" }}
{{- range $key, $value := .Values.config }}
{{- if has $key $reserved }}
{{- fail (printf "config.%s is set by the chart and cannot be overridden in config" $key) }}
{{- end }}
{{- if not (regexMatch "^[A-Z_][A-Z0-9_]*$" $key) }}
{{- fail (printf "config key %q is not an environment variable name (expected e.g. TANDEM_LOG)" $key) }}
{{- end }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{ $key }}: {{ include "tandem.envString" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Shutdown grace period of the server, in seconds (TANDEM_SHUTDOWN_GRACE_SECONDS, default 30).
*/}}
{{- define "tandem.shutdownGraceSeconds" -}}
{{- $g := .Values.config.TANDEM_SHUTDOWN_GRACE_SECONDS }}
{{- if or (kindIs "invalid" $g) (eq (toString $g) "") }}30
{{- else if regexMatch "^[0-9]+$" (include "tandem.envString" $g) }}{{ include "tandem.envString" $g }}
{{- else }}{{ fail (printf "config.TANDEM_SHUTDOWN_GRACE_SECONDS must be a whole number of seconds, not %q" (toString $g)) }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: larger than the preStop sleep plus the server's drain time.
*/}}
{{- define "tandem.terminationGracePeriodSeconds" -}}
{{- $grace := include "tandem.shutdownGraceSeconds" . | atoi }}
{{- $sleep := int .Values.lifecycle.preStopSleepSeconds }}
{{- $min := add $grace $sleep }}
{{- if eq (toString .Values.terminationGracePeriodSeconds) "" }}
{{- add $min 10 }}
{{- else }}
{{- $t := int .Values.terminationGracePeriodSeconds }}
{{- if le $t $min }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than TANDEM_SHUTDOWN_GRACE_SECONDS (%d) + lifecycle.preStopSleepSeconds (%d)" $t $grace $sleep) }}
{{- end }}
{{- $t }}
{{- end }}
{{- end }}

{{/*
Pod-level scheduling shared by the server and the migration Job.
*/}}
{{- define "tandem.podPlacement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
emptyDir volumes for the paths the server writes to (the root filesystem is read-only).
*/}}
{{- define "tandem.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

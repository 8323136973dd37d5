{{/* Chart name. */}}
{{- define "eac-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, prefixed with the chart name unless it already contains it. */}}
{{- define "eac-controller.fullname" -}}
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

{{- define "eac-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eac-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eac-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "eac-controller.labels" -}}
{{ include "eac-controller.selectorLabels" . }}
app.kubernetes.io/component: controller
{{ include "eac-controller.releaseLabels" . }}
{{- end }}

{{/*
The labels of everything in the release but for the selector's name: the `helm test` Pod has
these and its own component, so no selector of the controller's (Service, PDB) picks it.
*/}}
{{- define "eac-controller.releaseLabels" -}}
helm.sh/chart: {{ include "eac-controller.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: eac-controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "eac-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eac-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "eac-controller.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespace of the leader-election Lease and its Role. */}}
{{- define "eac-controller.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{- define "eac-controller.leaseName" -}}
{{- default (include "eac-controller.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
A duration value of the schema's form (a whole number and one unit of ms, s, m or h) in
milliseconds; -1 when it has more digits than any bound needs (so nothing overflows).
*/}}
{{- define "eac-controller.durationMs" -}}
{{- $value := toString . }}
{{- $number := regexFind "^[0-9]+" $value }}
{{- $unit := trimPrefix $number $value }}
{{- $factor := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000) $unit }}
{{- if or (not $number) (not $factor) (gt (len $number) 9) }}
{{- -1 }}
{{- else }}
{{- mul (atoi $number) $factor }}
{{- end }}
{{- end }}

{{/*
Fails unless a duration value lies within the bounds `eac-controller run` accepts for its flag.
Takes (list name value minMs maxMs "min" "max").
*/}}
{{- define "eac-controller.checkDuration" -}}
{{- $name := index . 0 }}
{{- $value := index . 1 }}
{{- $ms := atoi (include "eac-controller.durationMs" $value) }}
{{- if or (lt $ms (index . 2)) (gt $ms (index . 3)) }}
{{- fail (printf "%s=%v: must be between %s and %s" $name $value (index . 4) (index . 5)) }}
{{- end }}
{{- end }}

{{/* Checks that the schema cannot express (the same bounds and relations `eac-controller run` checks). */}}
{{- define "eac-controller.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a leader every replica would reconcile" }}
{{- end }}
{{- include "eac-controller.checkDuration" (list "resyncPeriod" .Values.resyncPeriod 1000 86400000 "1s" "24h") }}
{{- include "eac-controller.checkDuration" (list "pendingPoll" .Values.pendingPoll 1000 3600000 "1s" "1h") }}
{{- include "eac-controller.checkDuration" (list "awsTimeout" .Values.awsTimeout 1000 300000 "1s" "5m") }}
{{- include "eac-controller.checkDuration" (list "awsListLag" .Values.awsListLag 0 600000 "0s" "10m") }}
{{- include "eac-controller.checkDuration" (list "watchFailureTimeout" .Values.watchFailureTimeout 5000 3600000 "5s" "1h") }}
{{- if gt (atoi (include "eac-controller.durationMs" .Values.pendingPoll)) (atoi (include "eac-controller.durationMs" .Values.resyncPeriod)) }}
{{- fail (printf "pendingPoll=%v must not be longer than resyncPeriod=%v" .Values.pendingPoll .Values.resyncPeriod) }}
{{- end }}
{{- if .Values.leaderElection.enabled }}
{{- include "eac-controller.checkDuration" (list "leaderElection.leaseDuration" .Values.leaderElection.leaseDuration 2000 300000 "2s" "5m") }}
{{- include "eac-controller.checkDuration" (list "leaderElection.renewDeadline" .Values.leaderElection.renewDeadline 1000 300000 "1s" "5m") }}
{{- if ge (atoi (include "eac-controller.durationMs" .Values.leaderElection.renewDeadline)) (atoi (include "eac-controller.durationMs" .Values.leaderElection.leaseDuration)) }}
{{- fail (printf "leaderElection.renewDeadline=%v must be shorter than leaderElection.leaseDuration=%v: a leader must stop before a standby can take the Lease" .Values.leaderElection.renewDeadline .Values.leaderElection.leaseDuration) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Arguments of `eac-controller run`; every flag of the chart's values. */}}
{{- define "eac-controller.args" -}}
- run
{{ include "eac-controller.flags" . }}
{{- end }}

{{/* The flags of `run`, which `check` (the helm test) takes too. */}}
{{- define "eac-controller.flags" -}}
- --metrics-addr={{ .Values.metrics.bindAddress }}:{{ int .Values.metrics.port }}
- --log-format={{ .Values.logging.format }}
- --log-level={{ .Values.logging.level }}
- --resync-period={{ .Values.resyncPeriod }}
- --pending-poll={{ .Values.pendingPoll }}
- --concurrency={{ int .Values.concurrency }}
- --aws-rate-limit={{ int .Values.awsRateLimit }}
- --aws-burst={{ int .Values.awsBurst }}
- --aws-poll-share={{ required "awsPollShare: a number from 0.05 to 1" .Values.awsPollShare }}
- --aws-timeout={{ .Values.awsTimeout }}
- --aws-list-lag={{ .Values.awsListLag }}
- --watch-failure-timeout={{ .Values.watchFailureTimeout }}
- --adoption={{ .Values.adoption.mode }}
- --account-mappings={{ .Values.accountMappings.enabled }}
{{- if .Values.accountMappings.enabled }}
- --unmapped-namespaces={{ .Values.accountMappings.unmappedNamespaces }}
{{- end }}
- --acceptance-policies={{ .Values.acceptancePolicies.enabled }}
{{- if .Values.watchNamespace }}
- --namespace={{ .Values.watchNamespace }}
{{- end }}
{{- if .Values.labelSelector }}
- {{ printf "--label-selector=%s" .Values.labelSelector | quote }}
{{- end }}
{{- if .Values.region }}
- --region={{ .Values.region }}
{{- end }}
{{- with .Values.allowedRegions }}
- --allowed-regions={{ join "," . }}
{{- end }}
{{- if .Values.protonEndpoint }}
- {{ printf "--proton-endpoint=%s" .Values.protonEndpoint | quote }}
{{- end }}
{{- if .Values.stsEndpoint }}
- {{ printf "--sts-endpoint=%s" .Values.stsEndpoint | quote }}
{{- end }}
{{- if .Values.leaderElection.enabled }}
- --leader-election
{{- if .Values.leaderElection.namespace }}
- --leader-election-namespace={{ .Values.leaderElection.namespace }}
{{- end }}
- --lease-name={{ include "eac-controller.leaseName" . }}
- --lease-duration={{ .Values.leaderElection.leaseDuration }}
- --lease-renew-deadline={{ .Values.leaderElection.renewDeadline }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* A duration value of the schema's form in seconds (a number, possibly with a fraction). */}}
{{- define "eac-controller.durationSeconds" -}}
{{- divf (atoi (include "eac-controller.durationMs" .)) 1000 }}
{{- end }}

{{/*
PromQL label matchers that select this release's series: prometheusRule.selector, else the job
and namespace labels the ServiceMonitor gives them (job: the metrics Service's name).
*/}}
{{- define "eac-controller.metricsSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (include "eac-controller.metricsServiceName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "eac-controller.metricsServiceName" -}}
{{- include "eac-controller.fullname" . | trunc 55 | trimSuffix "-" }}-metrics
{{- end }}

{{/*
The range of EacStalledResources: prometheusRule.alerts.stalledResources.window, else long enough
to hold at least one retry of a resource that keeps failing. Retries back off to at most 5m
(passing faults), 10m (AccessDenied) or resyncPeriod (errors a retry will not fix), each +25 %
jitter, so 1.5 x max(resyncPeriod, 10m): 15m with the default resyncPeriod.
*/}}
{{- define "eac-controller.stalledWindow" -}}
{{- if .Values.prometheusRule.alerts.stalledResources.window }}
{{- .Values.prometheusRule.alerts.stalledResources.window }}
{{- else }}
{{- $ms := div (mul (max (atoi (include "eac-controller.durationMs" .Values.resyncPeriod)) 600000) 3) 2 }}
{{- if eq (mod $ms 60000) 0 }}
{{- printf "%dm" (div $ms 60000) }}
{{- else }}
{{- printf "%ds" (div (add $ms 999) 1000) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The controller's rules on its resource and on Events (ClusterRole or Role). */}}
{{- define "eac-controller.rules" -}}
- apiGroups: ["proton.eac.dev"]
  resources: ["environmentaccountconnections"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["proton.eac.dev"]
  resources: ["environmentaccountconnections/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.acceptancePolicies.enabled }}
- apiGroups: ["proton.eac.dev"]
  resources: ["connectionacceptancepolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["proton.eac.dev"]
  resources: ["connectionacceptancepolicies/status"]
  verbs: ["patch"]
{{- end }}
{{- end }}

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
helm.sh/chart: {{ include "eac-controller.chart" . }}
{{ include "eac-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
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

{{/* Checks that the schema cannot express. */}}
{{- define "eac-controller.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a leader every replica would reconcile" }}
{{- end }}
{{- end }}

{{/* Arguments of `eac-controller run`; every flag of the chart's values. */}}
{{- define "eac-controller.args" -}}
- run
- --metrics-addr={{ .Values.metrics.bindAddress }}:{{ int .Values.metrics.port }}
- --log-format={{ .Values.logging.format }}
- --log-level={{ .Values.logging.level }}
- --resync-period={{ .Values.resyncPeriod }}
- --pending-poll={{ .Values.pendingPoll }}
- --concurrency={{ int .Values.concurrency }}
- --aws-rate-limit={{ int .Values.awsRateLimit }}
- --aws-burst={{ int .Values.awsBurst }}
- --aws-timeout={{ .Values.awsTimeout }}
{{- if .Values.watchNamespace }}
- --namespace={{ .Values.watchNamespace }}
{{- end }}
{{- if .Values.labelSelector }}
- {{ printf "--label-selector=%s" .Values.labelSelector | quote }}
{{- end }}
{{- if .Values.region }}
- --region={{ .Values.region }}
{{- end }}
{{- if .Values.protonEndpoint }}
- {{ printf "--proton-endpoint=%s" .Values.protonEndpoint | quote }}
{{- end }}
{{- if .Values.leaderElection.enabled }}
- --leader-election
{{- if .Values.leaderElection.namespace }}
- --leader-election-namespace={{ .Values.leaderElection.namespace }}
{{- end }}
- --lease-name={{ include "eac-controller.leaseName" . }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The controller's rules on its resource and on Events (ClusterRole or Role). */}}
{{- define "eac-controller.rules" -}}
- apiGroups: ["proton.eac.dev"]
  resources: ["environmentaccountconnections"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["proton.eac.dev"]
  resources: ["environmentaccountconnections/status"]
  verbs: ["get", "patch"]
- apiGroups: ["proton.eac.dev"]
  resources: ["environmentaccountconnections/finalizers"]
  verbs: ["update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

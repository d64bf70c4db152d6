{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "k3svirt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name for namespaced objects. */}}
{{- define "k3svirt.fullname" -}}
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

{{/* Cluster-scoped objects (ClusterRoles) are shared by every namespace: include the namespace. */}}
{{- define "k3svirt.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "k3svirt.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "k3svirt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "k3svirt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: k3svirt
{{- end -}}

{{- define "k3svirt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "k3svirt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* k3svirt.image: (list $ "operator"|"gateway") -> <repository>/<component>:<tag> */}}
{{- define "k3svirt.image" -}}
{{- $root := index . 0 -}}
{{- $v := $root.Values.image -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $v.repository) (index . 1) (default $root.Chart.AppVersion $v.tag | toString) -}}
{{- end -}}

{{- define "k3svirt.operator.fullname" -}}
{{- printf "%s-operator" (include "k3svirt.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "k3svirt.gateway.fullname" -}}
{{- printf "%s-gateway" (include "k3svirt.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "k3svirt.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "k3svirt.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "k3svirt.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "k3svirt.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the gateway's hashed API keys (data key `keys`). */}}
{{- define "k3svirt.gateway.keysSecret" -}}
{{- default (printf "%s-api-keys" (include "k3svirt.gateway.fullname" .)) .Values.gateway.apiKeys.existingSecret -}}
{{- end -}}

{{/* Fails the render on a malformed pre-hashed key entry, so a bad value never reaches the cluster. */}}
{{- define "k3svirt.gateway.checkedKeys" -}}
{{- range .Values.gateway.apiKeys.hashed -}}
{{- if not (regexMatch "^[^:\\s]+:((read|operate|admin):((\\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?(,[a-z0-9]([-a-z0-9]*[a-z0-9])?)*):)?)?sha256:[0-9a-f]{64}$" .) -}}
{{- fail (printf "gateway.apiKeys.hashed: %q is not \"<name>:<role>[:<namespaces>]:sha256:<64 hex>\" (role read|operate|admin, namespaces * or ns1,ns2); generate entries with python -m k3svirt_gateway.keys add NAME --file FILE" .) -}}
{{- end -}}
{{ . }}
{{ end -}}
{{- end -}}

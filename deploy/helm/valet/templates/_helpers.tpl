{{/* The chart's names and the two shapes it renders. */}}

{{- define "valet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "valet.labels" -}}
app.kubernetes.io/name: valet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "valet.selector" -}}
app.kubernetes.io/name: valet
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* "true" for several replicas on etcd; refuses shapes valet cannot run. */}}
{{- define "valet.ha" -}}
{{- $engine := .Values.storage.engine -}}
{{- if eq $engine "etcd" -}}
{{- if lt (int .Values.replicas) 2 -}}
{{- fail "with storage.engine etcd, replicas must be 2 or more (one replica: use bbolt)" -}}
{{- end -}}
{{- if not .Values.storage.etcd.endpoints -}}
{{- fail "storage.etcd.endpoints must not be empty when storage.engine is etcd" -}}
{{- end -}}
{{- if and .Values.persistence.accessMode (ne .Values.persistence.accessMode "ReadWriteMany") -}}
{{- fail (printf "with storage.engine etcd, persistence.accessMode must be ReadWriteMany (every replica reads the same key files); it is %q" .Values.persistence.accessMode) -}}
{{- end -}}
true
{{- else if eq $engine "bbolt" -}}
{{- if ne (int .Values.replicas) 1 -}}
{{- fail "with storage.engine bbolt, replicas must be 1 (bbolt allows one writer: use etcd for several replicas)" -}}
{{- end -}}
{{- else -}}
{{- fail (printf "storage.engine must be bbolt or etcd; it is %q" $engine) -}}
{{- end -}}
{{- end -}}

{{- define "valet.accessMode" -}}
{{- if .Values.persistence.accessMode -}}
{{- .Values.persistence.accessMode -}}
{{- else if include "valet.ha" . -}}
ReadWriteMany
{{- else -}}
ReadWriteOnce
{{- end -}}
{{- end -}}

{{/* valet.yaml: the values' config with the keys the chart owns. */}}
{{- define "valet.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- range $k := list "listen" "data_dir" "storage" -}}
{{- if hasKey $cfg $k -}}
{{- fail (printf "config.%s is set by the chart; remove it from config (see storage.* and persistence.*)" $k) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) -}}
{{- $_ := set $cfg "data_dir" "/var/lib/valet" -}}
{{- if include "valet.ha" . -}}
{{- $e := .Values.storage.etcd -}}
{{- $etcd := dict "endpoints" $e.endpoints "prefix" $e.prefix "leader_ttl" $e.leaderTTL "request_timeout" $e.requestTimeout -}}
{{- if $e.tlsSecret -}}
{{- $tls := dict "ca_file" "/etc/valet/etcd-tls/ca.pem" -}}
{{- if $e.clientCert -}}
{{- $_ := set $tls "cert_file" "/etc/valet/etcd-tls/cert.pem" -}}
{{- $_ := set $tls "key_file" "/etc/valet/etcd-tls/key.pem" -}}
{{- end -}}
{{- $_ := set $etcd "tls" $tls -}}
{{- end -}}
{{- if $e.username -}}
{{- $_ := set $etcd "username" $e.username -}}
{{- $_ := set $etcd "password_file" "/etc/valet/etcd-auth/password" -}}
{{- end -}}
{{- $_ := set $cfg "storage" (dict "engine" "etcd" "etcd" $etcd) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

# Sourced by the curl examples: GATEWAY_URL (default http://127.0.0.1:8080), API_KEY (required),
# NAMESPACE (default "default").
: "${GATEWAY_URL:=http://127.0.0.1:8080}"
: "${API_KEY:?set API_KEY to a gateway key (python -m k3svirt_gateway.keys add NAME --role admin --file F)}"
: "${NAMESPACE:=default}"
api() {  # api METHOD PATH [curl args...]
  local method=$1 path=$2; shift 2
  curl -sS --fail-with-body -X "$method" -H "Authorization: Bearer $API_KEY" "$@" "$GATEWAY_URL$path"
  echo
}

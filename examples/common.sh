# shellcheck shell=sh
# Sourced by the curl examples: GATEWAY_URL (default http://127.0.0.1:8080), API_KEY (required),
# NAMESPACE (default "default").
: "${GATEWAY_URL:=http://127.0.0.1:8080}"
: "${API_KEY:?set API_KEY to a gateway key (python -m k3svirt_gateway.keys add NAME --role admin --file F)}"
: "${NAMESPACE:=default}"
api() {  # api METHOD PATH [curl args...]
  _method=$1 _path=$2; shift 2
  curl -sS --fail-with-body -X "$_method" -H "Authorization: Bearer $API_KEY" "$@" "$GATEWAY_URL$_path"
  echo
}
json() {  # json EXPR: evaluate a Python expression over the JSON document `d` read from stdin
  python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

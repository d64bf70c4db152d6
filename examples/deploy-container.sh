#!/bin/sh
# Deploy a container image, expose it as a Service, wait until its pod runs, print its answer through
# the Service's ClusterIP (run this on the node: kube-proxy routes the ClusterIP there), then read its
# log and figures, change its environment (a rolling update) and scale it.
# IMAGE: an image imported on the node (no registry is reachable); default: the http-echo test app,
# which answers "http-echo host=<pod> message=$MESSAGE". TIMEOUT: seconds to wait (default 120).
set -eu
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
APP=${APP:-hello}
IMAGE=${IMAGE:-localhost/k3svirt/http-echo:1.0}
TIMEOUT=${TIMEOUT:-120}
q="namespace=$NAMESPACE"

api POST "/api/v1/deployments?$q" -H 'Content-Type: application/json' \
  -d "{\"name\": \"$APP\", \"image\": \"$IMAGE\", \"replicas\": 1, \"ports\": [{\"port\": 8080}],
       \"env\": {\"MESSAGE\": \"hello from k3svirt\", \"PORT\": \"8080\"},
       \"resources\": {\"requests\": {\"cpu\": \"50m\", \"memory\": \"16Mi\"}, \"limits\": {\"memory\": \"64Mi\"}}}"
ip=$(api POST "/api/v1/services?$q" -H 'Content-Type: application/json' \
  -d "{\"name\": \"$APP\", \"deployment\": \"$APP\", \"ports\": [{\"port\": 80, \"targetPort\": 8080}]}" \
  | json 'd["clusterIP"]')
echo "service $APP: ClusterIP $ip"

# Wait until every pod of the app is Running and ready; show each new status (with its reason).
pods() { api GET "/api/v1/pods?$q&labelSelector=app%3D$APP"; }
wait_running() {  # wait_running COUNT
  deadline=$(($(date +%s) + TIMEOUT)) last=""
  while :; do
    state=$(pods | json '" ".join(p["name"] + "=" + p["status"] for p in d["items"] if not p["deleting"])')
    [ "$state" = "$last" ] || { echo "pods: ${state:-none}"; last=$state; }
    running=$(pods | json 'sum(1 for p in d["items"] if p["status"] == "Running" and p["ready"] and not p["deleting"])')
    total=$(pods | json 'len(d["items"])')
    [ "$running" = "$1" ] && [ "$total" = "$1" ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      pods | json '"\n".join(": ".join((p["name"], p["status"], p["statusMessage"])) for p in d["items"])' >&2
      echo "the pods of $APP did not run within $TIMEOUT s" >&2
      return 1
    fi
    sleep 2
  done
}
wait_running 1

# The answer through the Service (kube-proxy may need a moment to program a new ClusterIP).
i=0
until answer=$(curl -sS --fail --max-time 5 "http://$ip/" 2>&1); do
  i=$((i + 1)); [ "$i" -lt 15 ] || { echo "no answer from http://$ip/: $answer" >&2; exit 1; }
  sleep 1
done
echo "answer: $answer"

pod=$(pods | json 'd["items"][0]["name"]')
echo "log of $pod:"
api GET "/api/v1/pods/$pod/logs?$q&tailLines=5&timestamps=true"
echo "figures of $pod (kubelet Summary API; a 503 right after the start means: not measured yet):"
api GET "/api/v1/pods/$pod/stats?$q" || true

# A new environment is a new pod template: a rolling update to a new ReplicaSet.
api PATCH "/api/v1/deployments/$APP?$q" -H 'Content-Type: application/json' \
  -d '{"env": {"MESSAGE": "updated", "PORT": "8080"}}'
api PATCH "/api/v1/deployments/$APP?$q" -H 'Content-Type: application/json' -d '{"replicas": 2}'
wait_running 2
api GET "/api/v1/deployments/$APP?$q"

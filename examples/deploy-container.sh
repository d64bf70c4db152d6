#!/bin/sh
# Deploy a container image, expose it as a Service, scale it, list its pods.
set -eu
. "$(dirname "$0")/common.sh"
APP=${APP:-hello}
api POST "/api/v1/deployments?namespace=$NAMESPACE" -H 'Content-Type: application/json' \
  -d "{\"name\": \"$APP\", \"image\": \"nginx:1.27-alpine\", \"replicas\": 1, \"ports\": [{\"port\": 80}],
       \"env\": {\"GREETING\": \"hi\"}}"
api POST "/api/v1/services?namespace=$NAMESPACE" -H 'Content-Type: application/json' \
  -d "{\"name\": \"$APP\", \"deployment\": \"$APP\", \"ports\": [{\"port\": 8080, \"targetPort\": 80}]}"
api PATCH "/api/v1/deployments/$APP/scale?namespace=$NAMESPACE" -H 'Content-Type: application/json' -d '{"replicas": 2}'
api GET "/api/v1/pods?namespace=$NAMESPACE&labelSelector=app%3D$APP"

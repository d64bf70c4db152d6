#!/bin/sh
# Import a VMTemplate (YAML), create a VM from it with an override, list VMs, then stop/start/reboot it.
set -eu
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
VM=${VM:-demo-vm}
api POST "/api/v1/templates?namespace=$NAMESPACE" -H 'Content-Type: application/yaml' --data-binary @- <<'YAML'
apiVersion: k3svirt.io/v1alpha1
kind: VMTemplate
metadata:
  name: example-small
spec:
  kind: Template
  description: 1 vCPU, 256 MiB
  versions:
    - version: 1.0.0
      vm:
        cpu: {cores: 1}
        memory: {size: 256Mi}
YAML
api POST "/api/v1/vms?namespace=$NAMESPACE" -H 'Content-Type: application/json' \
  -d "{\"name\": \"$VM\", \"template\": {\"name\": \"example-small\", \"version\": \"1.0.0\"},
       \"overrides\": {\"cpu\": {\"cores\": 2}}}"
api GET "/api/v1/vms?namespace=$NAMESPACE"
api POST "/api/v1/vms/$VM/stop?namespace=$NAMESPACE"
api POST "/api/v1/vms/$VM/start?namespace=$NAMESPACE"
api POST "/api/v1/vms/$VM/reboot?namespace=$NAMESPACE" || true   # 409 until the VM runs
api GET "/api/v1/vms/$VM/stats?namespace=$NAMESPACE" || true     # 409/503 until the VM runs
api GET "/api/v1/templates/example-small/export?namespace=$NAMESPACE&version=1.0.0"

"""A tenant's ResourceQuota refuses through the gateway with its own message: 403 problem+json."""

from __future__ import annotations

from k3svirt_gateway.k8s import core_path

SPEC = {"memory": {"size": "64Mi"}, "cpu": {"cores": 1}, "runStrategy": "Halted"}


def test_vm_over_the_namespace_quota_is_403_with_the_quota_message(app, client, admin, namespace):
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "tenant"},
        "spec": {"hard": {"count/virtualmachines.k3svirt.io": "1"}},
    }
    app.extensions["k3svirt.kube"].post(core_path("resourcequotas", namespace), quota)
    first = client.post(f"/api/v1/vms?namespace={namespace}", json={"name": "one", "spec": SPEC}, headers=admin)
    assert first.status_code == 201, first.json
    # The quota controller counts the first VM asynchronously; admission refuses once it has.
    for _ in range(50):
        r = client.post(f"/api/v1/vms?namespace={namespace}", json={"name": "two", "spec": SPEC}, headers=admin)
        if r.status_code != 201:
            break
        client.delete(f"/api/v1/vms/two?namespace={namespace}", headers=admin)
    assert r.status_code == 403, r.json
    assert r.mimetype == "application/problem+json"
    assert "exceeded quota: tenant" in r.json["detail"], r.json
    assert r.json["reason"] == "QuotaExceeded"

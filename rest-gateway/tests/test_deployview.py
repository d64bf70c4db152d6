"""Pure Deployment shaping: build, PATCH application, rollout progress."""

from __future__ import annotations

import pytest
from k3svirt_gateway.deployview import apply_update, build_deployment, deployment_view, rollout

IMAGE = "localhost/k3svirt/http-echo:1.0"


def _as_read(obj: dict, generation: int = 1, **status) -> dict:
    """What the API server returns for `obj` after admission (defaults + status)."""
    out = {**obj, "metadata": {**obj["metadata"], "generation": generation, "resourceVersion": "812"}}
    out["spec"] = {**obj["spec"], "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}}}
    out["status"] = status
    return out


def test_build_defaults_pull_policy_and_shapes_container():
    body = {
        "name": "web",
        "image": IMAGE,
        "replicas": 2,
        "ports": [{"port": 8080, "name": "http"}],
        "env": {"MODE": "x"},
        "args": ["-listen=:8080"],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
    }
    obj = build_deployment("demo", body)
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    assert c == {
        "name": "web",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "MODE", "value": "x"}],
        "args": ["-listen=:8080"],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
    }
    assert obj["spec"]["selector"] == {"matchLabels": {"app": "web"}} and obj["spec"]["replicas"] == 2
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "k3svirt-gateway"
    assert (
        build_deployment("demo", {**body, "imagePullPolicy": "Never"})["spec"]["template"]["spec"]["containers"][0][
            "imagePullPolicy"
        ]
        == "Never"
    )


def test_apply_update_replaces_fields_of_the_first_container():
    read = _as_read(build_deployment("demo", {"name": "web", "image": IMAGE, "env": {"A": "1", "B": "2"}}))
    new = apply_update(read, {"image": "localhost/k3svirt/http-echo:2.0", "env": {"B": "3"}, "replicas": 3})
    c = new["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "localhost/k3svirt/http-echo:2.0" and c["env"] == [{"name": "B", "value": "3"}]
    assert new["spec"]["replicas"] == 3
    assert new["metadata"]["resourceVersion"] == "812"  # the PUT is conditional on what was read
    assert read["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE  # input untouched
    cleared = apply_update(new, {"env": {}, "command": []})
    assert "env" not in cleared["spec"]["template"]["spec"]["containers"][0]
    scaled = apply_update(read, {"replicas": 0})
    assert scaled["spec"]["template"] == read["spec"]["template"] and scaled["spec"]["replicas"] == 0


@pytest.mark.parametrize(
    ("generation", "status", "replicas", "expected"),
    [
        (2, {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, 2, "Progressing"),
        (2, {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}, 2, "Progressing"),
        (2, {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}, 2, "Progressing"),
        (2, {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}, 2, "Progressing"),
        (2, {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, 2, "Complete"),
        (3, {"observedGeneration": 3}, 0, "Complete"),  # scaled to zero: the API server omits zero counts
        (1, {}, 1, "Progressing"),  # not yet seen by the controller
    ],
)
def test_rollout(generation, status, replicas, expected):
    obj = _as_read(
        build_deployment("demo", {"name": "web", "image": IMAGE, "replicas": replicas}), generation, **status
    )
    assert rollout(obj) == expected


def test_rollout_failed_and_deleting():
    obj = _as_read(
        build_deployment("demo", {"name": "web", "image": IMAGE}),
        1,
        observedGeneration=1,
        replicas=1,
        updatedReplicas=1,
        unavailableReplicas=1,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "web-5d4f" has timed out progressing.',
            }
        ],
    )
    assert rollout(obj) == "Failed"
    v = deployment_view(obj)
    assert v["unavailableReplicas"] == 1 and v["conditions"][0]["reason"] == "ProgressDeadlineExceeded"
    obj["metadata"]["deletionTimestamp"] = "2025-01-10T10:09:00Z"
    assert rollout(obj) == "Deleting" and deployment_view(obj)["deleting"] is True

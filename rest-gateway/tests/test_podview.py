"""Pure pod views: per-container states, kubectl-like status precedence, log blockers, requests."""

from __future__ import annotations

import pytest
from k3svirt_gateway.podview import log_blocker, pod_resources, pod_status, pod_view
from pod_objects import (
    COMPLETED,
    CRASH,
    CREATING,
    ERR_PULL,
    LAST_ERROR,
    PULL_BACKOFF,
    RUNNING,
    cstatus,
    pod,
)


def test_running_pod():
    p = pod(statuses=[cstatus(RUNNING, ready=True)], ready=True)
    v = pod_view(p)
    assert (v["status"], v["phase"], v["ready"], v["readyContainers"], v["restarts"]) == (
        "Running",
        "Running",
        True,
        "1/1",
        0,
    )
    assert (v["node"], v["podIP"], v["startTime"]) == ("node1", "10.42.0.7", "2025-01-10T10:00:00Z")
    (c,) = v["containers"]
    assert c == {
        "name": "app",
        "image": "localhost/k3svirt/http-echo:1.0",
        "state": "running",
        "startedAt": "2025-01-10T10:00:05Z",
        "ready": True,
        "restarts": 0,
    }
    assert v["statusMessage"] == ""


@pytest.mark.parametrize("state", [PULL_BACKOFF, ERR_PULL], ids=["ImagePullBackOff", "ErrImagePull"])
def test_image_not_on_node_says_so(state):
    p = pod(statuses=[cstatus(state)], phase="Pending")
    v = pod_view(p)
    reason = state["waiting"]["reason"]
    assert v["status"] == reason and v["phase"] == "Pending"
    (c,) = v["containers"]
    assert c["state"] == "waiting" and c["reason"] == reason and c["message"] == state["waiting"]["message"]
    expected = (
        "image 'localhost/k3svirt/http-echo:1.0' is not present on the node; "
        "images are imported locally, no registry is reachable"
    )
    assert c["hint"] == expected
    assert v["statusMessage"] == f"container 'app': {expected}"


def test_pull_policy_always_is_explained():
    p = pod(statuses=[cstatus(PULL_BACKOFF)], phase="Pending")
    p["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    hint = pod_view(p)["containers"][0]["hint"]
    assert "imagePullPolicy Always needs a registry" in hint and "IfNotPresent" in hint


def test_container_creating_is_not_bare_pending():
    v = pod_view(pod(statuses=[cstatus(CREATING)], phase="Pending"))
    assert v["status"] == "ContainerCreating"
    assert v["containers"][0]["reason"] == "ContainerCreating"


def test_crash_loop_with_last_exit():
    p = pod(statuses=[cstatus(CRASH, restarts=3, lastState=LAST_ERROR)])
    v = pod_view(p)
    assert v["status"] == "CrashLoopBackOff" and v["restarts"] == 3
    c = v["containers"][0]
    assert c["lastState"] == {
        "state": "terminated",
        "exitCode": 3,
        "reason": "Error",
        "startedAt": "2025-01-10T10:01:00Z",
        "finishedAt": "2025-01-10T10:01:01Z",
    }
    assert v["statusMessage"] == "container 'app' keeps exiting: last exit code 3 (Error), 3 restarts"


def test_completed():
    v = pod_view(pod(statuses=[cstatus(COMPLETED)], phase="Succeeded"))
    assert v["status"] == "Completed"
    assert v["containers"][0] == {
        "name": "app",
        "image": "localhost/k3svirt/http-echo:1.0",
        "state": "terminated",
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": "2025-01-10T10:00:05Z",
        "finishedAt": "2025-01-10T10:00:06Z",
        "ready": False,
        "restarts": 0,
    }


def test_terminated_without_reason_shows_exit_code_or_signal():
    bare = {"terminated": {"exitCode": 137, "startedAt": "2025-01-10T10:00:05Z"}}
    assert pod_status(pod(statuses=[cstatus(bare)], phase="Failed")) == "ExitCode:137"
    sig = {"terminated": {"exitCode": 0, "signal": 9}}
    assert pod_status(pod(statuses=[cstatus(sig)], phase="Failed")) == "Signal:9"


def test_completed_but_another_container_running():
    containers = [{"name": "job", "image": "a"}, {"name": "app", "image": "b"}]
    statuses = [cstatus(COMPLETED, name="job"), cstatus(RUNNING, name="app", ready=True)]
    assert pod_status(pod(containers=containers, statuses=statuses, ready=False)) == "NotReady"
    assert pod_status(pod(containers=containers, statuses=statuses, ready=True)) == "Running"


def test_waiting_reason_wins_over_running_sibling():
    containers = [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]
    statuses = [cstatus(PULL_BACKOFF, name="a"), cstatus(RUNNING, name="b", ready=True)]
    v = pod_view(pod(containers=containers, statuses=statuses))
    assert v["status"] == "ImagePullBackOff" and v["readyContainers"] == "1/2" and v["ready"] is False


def test_init_containers():
    p = pod(statuses=[cstatus({"waiting": {"reason": "PodInitializing"}})], phase="Pending")
    p["spec"]["initContainers"] = [{"name": "setup", "image": "localhost/k3svirt/http-echo:1.0"}]
    p["status"]["conditions"][1]["status"] = "False"
    p["status"]["initContainerStatuses"] = [cstatus(RUNNING, name="setup")]
    assert pod_status(p) == "Init:0/1"
    p["status"]["initContainerStatuses"] = [cstatus(CRASH, name="setup", restarts=2, lastState=LAST_ERROR)]
    v = pod_view(p)
    assert v["status"] == "Init:CrashLoopBackOff" and v["restarts"] == 2
    assert v["initContainers"][0]["reason"] == "CrashLoopBackOff"
    p["status"]["initContainerStatuses"] = [cstatus(LAST_ERROR, name="setup")]
    assert pod_status(p) == "Init:Error"


def test_terminating_and_unscheduled():
    p = pod(statuses=[cstatus(RUNNING, ready=True)], ready=True)
    p["metadata"]["deletionTimestamp"] = "2025-01-10T10:09:00Z"
    v = pod_view(p)
    assert v["status"] == "Terminating" and v["deleting"] is True

    p = pod(node=None, phase="Pending")
    p["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "lastProbeTime": None,
            "lastTransitionTime": "2025-01-10T10:00:00Z",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.",
        }
    ]
    v = pod_view(p)
    assert v["status"] == "Pending" and v["node"] == "" and v["podIP"] == ""
    assert v["statusMessage"].startswith("not scheduled: Unschedulable: 0/1 nodes are available")
    assert v["containers"] == [
        {"name": "app", "image": "localhost/k3svirt/http-echo:1.0", "state": "waiting", "ready": False, "restarts": 0}
    ]


def test_pod_without_status_from_the_api_server():
    # what a freshly created pod looks like without a scheduler: no conditions, no container statuses
    p = pod(node=None, phase="Pending")
    p["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    v = pod_view(p)
    assert v["status"] == "Pending"
    assert v["statusMessage"] == "waiting for the scheduler to place the pod on a node"


def test_log_blockers():
    assert log_blocker(pod(node=None, phase="Pending"), "app", False) == "it is not scheduled on a node yet"
    assert log_blocker(pod(phase="Pending"), "app", False) == "container 'app' has not been created yet"
    creating = pod(statuses=[cstatus(CREATING)], phase="Pending")
    assert log_blocker(creating, "app", False) == "container 'app' has not started (ContainerCreating)"
    assert log_blocker(pod(statuses=[cstatus(RUNNING)]), "app", False) is None
    assert log_blocker(pod(statuses=[cstatus(RUNNING)]), "app", True) == (
        "container 'app' has no previous (terminated) instance"
    )
    crashing = pod(statuses=[cstatus(CRASH, restarts=1, lastState=LAST_ERROR)])
    assert log_blocker(crashing, "app", False) is None and log_blocker(crashing, "app", True) is None
    assert log_blocker(pod(statuses=[cstatus(COMPLETED)], phase="Succeeded"), "app", False) is None


def test_pod_resources():
    containers = [
        {"name": "a", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
        {
            "name": "b",
            "image": "y",
            "resources": {
                "requests": {"cpu": "500m", "memory": "128Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"},
            },
        },
    ]
    p = pod(containers=containers)
    assert pod_resources(p, "requests") == {"cpu": 0.75, "memory": 192 * 1024**2}
    assert pod_resources(p, "limits") == {"cpu": None, "memory": None}  # container a is unbounded
    p["spec"]["initContainers"] = [{"name": "i", "image": "z", "resources": {"requests": {"cpu": "2"}}}]
    p["spec"]["overhead"] = {"cpu": "100m"}
    assert pod_resources(p, "requests") == {"cpu": 2.1, "memory": 192 * 1024**2}
    p["spec"]["containers"][0]["resources"]["limits"] = {"cpu": "1500m", "memory": "1Gi"}
    assert pod_resources(p, "limits") == {"cpu": 2.6, "memory": 1024**3 + 256 * 1024**2}

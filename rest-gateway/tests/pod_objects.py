"""Pod and kubelet Summary objects shaped exactly like the API server / kubelet return them (field
names and nesting as in core/v1 Pod and kubelet stats/v1alpha1 Summary), for the pure unit tests."""

from __future__ import annotations

import copy
from typing import Any

CREATED = "2025-01-10T10:00:00Z"


def conditions(ready: bool, scheduled: bool = True, initialized: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": None, "lastTransitionTime": CREATED},
        {"type": "Initialized", "status": str(initialized), "lastProbeTime": None, "lastTransitionTime": CREATED},
    ]
    if ready:
        out.append({"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": CREATED})
    else:
        out.append(
            {
                "type": "Ready",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": CREATED,
                "reason": "ContainersNotReady",
                "message": "containers with unready status: [app]",
            }
        )
    out.append({"type": "PodScheduled", "status": str(scheduled), "lastProbeTime": None, "lastTransitionTime": CREATED})
    return out


def pod(
    name: str = "web-7d9c8b6f5-x2x9q",
    *,
    containers: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    ready: bool = False,
    node: str | None = "node1",
    **status: Any,
) -> dict[str, Any]:
    spec_containers = containers or [
        {
            "name": "app",
            "image": "localhost/k3svirt/http-echo:1.0",
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        }
    ]
    spec: dict[str, Any] = {
        "containers": spec_containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
    }
    if node:
        spec["nodeName"] = node
    st: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(ready, scheduled=bool(node)),
        "qosClass": "BestEffort",
    }
    if node:
        st.update(
            hostIP="10.0.2.15",
            hostIPs=[{"ip": "10.0.2.15"}],
            podIP="10.42.0.7",
            podIPs=[{"ip": "10.42.0.7"}],
            startTime=CREATED,
        )
    if statuses is not None:
        st["containerStatuses"] = statuses
    st.update(status)
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": "web-7d9c8b6f5-",
            "namespace": "demo",
            "uid": "5b3c0f1e-8d2a-4a57-9d7e-0c1b2a3d4e5f",
            "resourceVersion": "4711",
            "creationTimestamp": CREATED,
            "labels": {"app": "web", "pod-template-hash": "7d9c8b6f5"},
        },
        "spec": spec,
        "status": st,
    }


def cstatus(state: dict[str, Any], *, name: str = "app", ready: bool = False, restarts: int = 0, **kw: Any):
    out = {
        "name": name,
        "state": state,
        "lastState": {},
        "ready": ready,
        "restartCount": restarts,
        "image": "localhost/k3svirt/http-echo:1.0",
        "imageID": "",
        "started": "running" in state,
    }
    out.update(kw)
    return out


RUNNING = {"running": {"startedAt": "2025-01-10T10:00:05Z"}}
CREATING = {"waiting": {"reason": "ContainerCreating"}}
PULL_BACKOFF = {
    "waiting": {
        "reason": "ImagePullBackOff",
        "message": 'Back-off pulling image "localhost/k3svirt/http-echo:1.0"',
    }
}
ERR_PULL = {
    "waiting": {
        "reason": "ErrImagePull",
        "message": 'failed to pull and unpack image "localhost/k3svirt/http-echo:1.0": failed to resolve reference '
        '"localhost/k3svirt/http-echo:1.0": failed to do request: Head "https://localhost/v2/k3svirt/http-echo/'
        'manifests/1.0": dial tcp 127.0.0.1:443: connect: connection refused',
    }
}
CRASH = {
    "waiting": {
        "reason": "CrashLoopBackOff",
        "message": "back-off 40s restarting failed container=app pod=web-7d9c8b6f5-x2x9q_demo(5b3c0f1e)",
    }
}
LAST_ERROR = {
    "terminated": {
        "exitCode": 3,
        "reason": "Error",
        "startedAt": "2025-01-10T10:01:00Z",
        "finishedAt": "2025-01-10T10:01:01Z",
        "containerID": "containerd://0f3a",
    }
}
COMPLETED = {
    "terminated": {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": "2025-01-10T10:00:05Z",
        "finishedAt": "2025-01-10T10:00:06Z",
        "containerID": "containerd://9a1b",
    }
}


def summary_pod(
    name: str = "web-7d9c8b6f5-x2x9q",
    *,
    t: str = "2025-01-10T10:05:00Z",
    nano_cores: int = 250_000_000,
    working_set: int = 50 * 1024**2,
    rx: int = 1_000_000,
    tx: int = 2_000_000,
) -> dict[str, Any]:
    """One entry of Summary.pods (kubelet stats/v1alpha1 PodStats)."""
    cpu = {"time": t, "usageNanoCores": nano_cores, "usageCoreNanoSeconds": 12_000_000_000}
    mem = {
        "time": t,
        "availableBytes": 0,
        "usageBytes": working_set + 4096,
        "workingSetBytes": working_set,
        "rssBytes": working_set - 8192,
        "pageFaults": 1000,
        "majorPageFaults": 2,
    }
    fs_root = {
        "time": t,
        "availableBytes": 10 * 1024**3,
        "capacityBytes": 20 * 1024**3,
        "usedBytes": 40960,
        "inodesFree": 1_000_000,
        "inodes": 1_310_720,
        "inodesUsed": 12,
    }
    fs_logs = {**fs_root, "usedBytes": 8192, "inodesUsed": 2}
    return {
        "podRef": {"name": name, "namespace": "demo", "uid": "5b3c0f1e-8d2a-4a57-9d7e-0c1b2a3d4e5f"},
        "startTime": CREATED,
        "containers": [
            {
                "name": "app",
                "startTime": "2025-01-10T10:00:05Z",
                "cpu": copy.deepcopy(cpu),
                "memory": copy.deepcopy(mem),
                "rootfs": fs_root,
                "logs": fs_logs,
            }
        ],
        "cpu": cpu,
        "memory": mem,
        "network": {
            "time": t,
            "name": "eth0",
            "rxBytes": rx,
            "rxErrors": 0,
            "txBytes": tx,
            "txErrors": 0,
            "interfaces": [{"name": "eth0", "rxBytes": rx, "rxErrors": 0, "txBytes": tx, "txErrors": 0}],
        },
        "volume": [
            {
                "time": t,
                "availableBytes": 8 * 1024**3,
                "capacityBytes": 8 * 1024**3,
                "usedBytes": 12288,
                "inodesFree": 2_000_000,
                "inodes": 2_000_009,
                "inodesUsed": 9,
                "name": "kube-api-access-7x2lq",
            }
        ],
        "ephemeral-storage": {
            "time": t,
            "availableBytes": 10 * 1024**3,
            "capacityBytes": 20 * 1024**3,
            "usedBytes": 40960 + 8192 + 4096,
            "inodesFree": 1_000_000,
            "inodes": 1_310_720,
            "inodesUsed": 15,
        },
        "process_stats": {"process_count": 1},
    }


def summary(pods: list[dict[str, Any]], node: str = "node1", t: str = "2025-01-10T10:05:00Z") -> dict[str, Any]:
    """A kubelet Summary (GET /api/v1/nodes/{node}/proxy/stats/summary)."""
    return {
        "node": {
            "nodeName": node,
            "systemContainers": [
                {"name": "kubelet", "startTime": CREATED, "cpu": {"time": t, "usageNanoCores": 30_000_000}}
            ],
            "startTime": CREATED,
            "cpu": {"time": t, "usageNanoCores": 900_000_000, "usageCoreNanoSeconds": 9_000_000_000_000},
            "memory": {
                "time": t,
                "availableBytes": 8 * 1024**3,
                "usageBytes": 3 * 1024**3,
                "workingSetBytes": 2 * 1024**3,
            },
            "network": {"time": t, "name": "eth0", "rxBytes": 5, "txBytes": 6, "interfaces": []},
            "fs": {"time": t, "availableBytes": 10 * 1024**3, "capacityBytes": 20 * 1024**3, "usedBytes": 10 * 1024**3},
            "runtime": {"imageFs": {"time": t, "usedBytes": 123456}},
            "rlimit": {"time": t, "maxpid": 4194304, "curproc": 300},
        },
        "pods": pods,
    }


def node(name: str = "node1", cpu: str = "8", memory: str = "16318012Ki", ready: bool = True) -> dict[str, Any]:
    """A core/v1 Node as the kubelet registers it."""
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "0d6c8a51-2d51-4f1b-a1e6-3b0f6f7c9d10",
            "creationTimestamp": CREATED,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
        },
        "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]},
        "status": {
            "capacity": {"cpu": cpu, "ephemeral-storage": "20466256Ki", "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "ephemeral-storage": "18861479601", "memory": "16215612Ki", "pods": "110"},
            "conditions": [
                {
                    "type": "MemoryPressure",
                    "status": "False",
                    "lastHeartbeatTime": "2025-01-10T10:04:00Z",
                    "lastTransitionTime": CREATED,
                    "reason": "KubeletHasSufficientMemory",
                    "message": "kubelet has sufficient memory available",
                },
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastHeartbeatTime": "2025-01-10T10:04:00Z",
                    "lastTransitionTime": CREATED,
                    "reason": "KubeletReady" if ready else "KubeletNotReady",
                    "message": "kubelet is posting ready status" if ready else "container runtime network not ready",
                },
            ],
            "addresses": [{"type": "InternalIP", "address": "10.0.2.15"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "f0e1",
                "systemUUID": "a1b2",
                "bootID": "c3d4",
                "kernelVersion": "6.1.0-28-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.6.20",
                "kubeletVersion": "v1.36.3",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }

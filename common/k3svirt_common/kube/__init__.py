"""k3svirt's one Kubernetes client layer, shared by the operator, the gateway and the key tool.

    from k3svirt_common.kube import ApiError, Client, group_path, load_config

    api = Client(load_config())            # kubeconfig file, $KUBECONFIG, service account, ~/.kube/config
    vm = api.get(group_path("k3svirt.io", "v1alpha1", "virtualmachines", "default", "web"))
    api.patch(path, {"spec": {...}})       # merge patch; patch="strategic" | "json"
    for ev in ListWatch(api, path).events(): ...   # SYNC, then ADDED/MODIFIED/DELETED/BOOKMARK

Modules: paths (quoted URL building), errors (ApiError), config (KubeConfig, load_config),
client (Client, Stream), watch (Watch, ListWatch).
"""

from .client import APPLY_PATCH, JSON, JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, Client, Stream
from .config import ConfigError, KubeConfig, from_kubeconfig, in_cluster, load_config
from .errors import ApiError
from .paths import core_path, group_path, k3svirt_path, segment
from .watch import SYNC, ListWatch, Watch, WatchEvent

__all__ = [
    "APPLY_PATCH",
    "JSON",
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "SYNC",
    "ApiError",
    "Client",
    "ConfigError",
    "KubeConfig",
    "ListWatch",
    "Stream",
    "Watch",
    "WatchEvent",
    "core_path",
    "from_kubeconfig",
    "group_path",
    "in_cluster",
    "k3svirt_path",
    "load_config",
    "segment",
]

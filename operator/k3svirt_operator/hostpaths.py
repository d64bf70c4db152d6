"""Which host paths a VM spec may name. Without this, anyone allowed to create a VirtualMachine could
attach the host's root disk (`disks[].source.volume.path: /dev/sda`) or read any host file as a
"kernel". Paths are resolved (symlinks, `..`) before they are compared with the allowed directories.

K3SVIRT_KERNEL_DIRS  colon-separated; default /var/lib/k3svirt/guest:/var/lib/k3svirt/kernels (never /boot by
                     default: the host's own kernel and initramfs are the node's, not a tenant's)
K3SVIRT_VOLUME_DIRS  colon-separated; default /var/lib/k3svirt-volumes. Volumes are scoped to tenants: a
                     VM of namespace NS may attach only what lies under DIR/NS/ of an entry DIR (the node
                     admin puts tenant A's volumes in DIR/A/), never another namespace's or DIR's own
                     files. An entry NS=PATH grants PATH (a file, a device such as /dev/disk/by-id/X, or a
                     directory) to namespace NS alone.
K3SVIRT_IMAGE_DIRS   colon-separated; default /var/lib/k3svirt-images: where `file://` image URLs may
                     point (without it, `file:///dev/sda` would copy the host's disk into a guest's)

Host networks are fenced the same way (without it, `bridge: cni0` would put a VM on the pod network):
K3SVIRT_BRIDGES      colon-separated host bridges VMs may join; default none
K3SVIRT_NAT_NETWORKS colon-separated libvirt networks VMs may join; default "default"
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_KERNEL_DIRS = "/var/lib/k3svirt/guest:/var/lib/k3svirt/kernels"
DEFAULT_VOLUME_DIRS = "/var/lib/k3svirt-volumes"
DEFAULT_IMAGE_DIRS = "/var/lib/k3svirt-images"


@dataclass(frozen=True)
class HostPaths:
    """The node's allow-lists (config.Settings builds them from the variables above; the directory
    defaults follow K3SVIRT_STORAGE_ROOT). Directories are resolved already."""

    kernel_dirs: tuple[str, ...] = tuple(DEFAULT_KERNEL_DIRS.split(":"))
    volume_dirs: tuple[str, ...] = (DEFAULT_VOLUME_DIRS,)  # each holds one subdirectory per namespace
    volume_grants: tuple[tuple[str, str], ...] = ()  # (namespace, path) from NS=PATH entries
    image_dirs: tuple[str, ...] = (DEFAULT_IMAGE_DIRS,)
    bridges: tuple[str, ...] = ()
    nat_networks: tuple[str, ...] = ("default",)


def _inside(path: str, dirs: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d.rstrip("/") + "/") for d in dirs)


def volume_roots(allowed: HostPaths, namespace: str) -> list[str]:
    """Where a VM of `namespace` may take volumes from: DIR/<namespace> of every volume directory (resolved
    now: the node admin may make it a symlink) and the paths granted to the namespace by name."""
    if not namespace or "/" in namespace or namespace in (".", ".."):
        return []  # never the volume directory itself (an empty or odd name would be it)
    roots = [os.path.realpath(os.path.join(d, namespace)) for d in allowed.volume_dirs]
    return roots + [path for ns, path in allowed.volume_grants if ns == namespace]


def violations(spec: Mapping[str, Any], allowed: HostPaths, namespace: str) -> list[tuple[str, str]]:
    """(field, message) for every host path in a merged VM spec (of a VM in `namespace`) that is not
    allowed on this node."""
    out = []
    kernel_dirs = allowed.kernel_dirs
    kernel = (spec.get("boot") or {}).get("kernel") or {}
    for key in ("path", "initrdPath"):
        value = kernel.get(key)
        if value and not _inside(value, kernel_dirs):
            out.append(
                (
                    f"spec.boot.kernel.{key}",
                    f"{value!r} is not under an allowed kernel directory ({':'.join(kernel_dirs)}; "
                    "the node's K3SVIRT_KERNEL_DIRS)",
                )
            )
    volume_roots_ = volume_roots(allowed, namespace)
    for i, disk in enumerate(spec.get("disks") or []):
        path = ((disk.get("source") or {}).get("volume") or {}).get("path")
        if path and not _inside(path, volume_roots_):
            out.append(
                (
                    f"spec.disks[{i}].source.volume.path",
                    f"{path!r} is not under an allowed volume directory of namespace {namespace!r} "
                    f"({':'.join(volume_roots_) or 'none'}; the node's K3SVIRT_VOLUME_DIRS hold one "
                    "subdirectory per namespace)",
                )
            )
    bridges, networks = allowed.bridges, allowed.nat_networks
    for i, nic in enumerate(spec.get("networks") or []):
        bridge = (nic.get("bridge") or {}).get("name")
        if bridge is not None and bridge not in bridges:
            out.append(
                (
                    f"spec.networks[{i}].bridge.name",
                    f"{bridge!r} is not a bridge VMs may join on this node "
                    f"({':'.join(bridges) or 'none'}; the node's K3SVIRT_BRIDGES)",
                )
            )
        nat = nic.get("nat")
        if nat is not None and (nat.get("network") or "default") not in networks:
            out.append(
                (
                    f"spec.networks[{i}].nat.network",
                    f"{nat.get('network')!r} is not a network VMs may join on this node "
                    f"({':'.join(networks) or 'none'}; the node's K3SVIRT_NAT_NETWORKS)",
                )
            )
    for i, disk in enumerate(spec.get("disks") or []):
        url = ((disk.get("source") or {}).get("image") or {}).get("url")
        problem = file_url_problem(url, allowed.image_dirs) if url else None
        if problem:
            out.append((f"spec.disks[{i}].source.image.url", problem))
    return out


def file_url_problem(url: str, image_dirs: Sequence[str]) -> str | None:
    """Why a file:// image URL may not be read on this node (None: allowed, or not a file:// URL)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "file":
        return None
    dirs = image_dirs
    if parts.netloc not in ("", "localhost"):
        return f"{url!r} names a host ({parts.netloc!r}); file:// URLs are files of this node"
    path = urllib.parse.unquote(parts.path)
    if "\0" in path or not path.startswith("/"):
        return f"{url!r} is not an absolute file path"
    if not _inside(path, dirs):
        return f"{url!r} is not under an allowed image directory ({':'.join(dirs)}; the node's K3SVIRT_IMAGE_DIRS)"
    real = os.path.realpath(path)
    if os.path.exists(real) and not os.path.isfile(real):
        return f"{url!r} is not a regular file"
    return None

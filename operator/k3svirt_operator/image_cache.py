"""Shared, node-local cache of base disk images under ``<root>/images/``.

Each URL is cached once as ``<sha256(url)>.img`` with a ``.json`` sidecar (url, sha256 of the
content, requested checksum, size, detected format, virtual size). The sidecar is written last,
so "sidecar present" means "download complete and verified".

Choices (documented):
- ``file://`` URLs are COPIED into the cache like http ones: overlays reference the cached copy,
  so later edits/removal of the source file cannot corrupt running VMs' backing chains.
- A cached image is never replaced in place (overlays depend on it). If a later request for the
  same URL carries a checksum that doesn't match the cached content, that is an ``ImageError``;
  change the URL (e.g. versioned file name) to get new content.
- Concurrency: an exclusive ``flock`` on ``<key>.lock`` serialises downloads of one URL across
  threads and processes; the second caller finds the sidecar and returns without downloading.
- Images with a backing file or an external data file are rejected (a downloaded qcow2 must not
  make QEMU open arbitrary host files). Compressed archives are rejected with a clear message.
- Cached files are 0644 root-owned: QEMU opens them read-only as backing files.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import image_fetch, shutdown
from .filelock import locked
from .hostfs import DIR_MODE, InsufficientStorage, StorageError, ensure_dir, qemu_img_info
from .image_fetch import FetchPolicy

log = logging.getLogger(__name__)

IMAGE_MODE = 0o644
CHUNK = 1024 * 1024
USER_AGENT = "k3svirt-operator"

QCOW2_MAGIC = b"QFI\xfb"
_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"PK\x03\x04": "zip",
}


class ImageError(RuntimeError):
    """Fetching or validating a base image failed; the message says why (and names the URL)."""


# ---------------------------------------------------------------------------------------------
# who wants which download: a download no live VM wants any more is cancelled (a VM deleted while
# its image downloads must not keep writing the cache's .part file until the image ends).
_wants_lock = threading.Lock()
_wanted_by: dict[str, set[str]] = {}  # url -> uids of the VMs whose passes wait for it now
_cancels: dict[str, threading.Event] = {}  # url -> set when the last VM that wanted it is gone
_gone: dict[str, float] = {}  # uid -> when it was withdrawn (a pass already under way registers late)
_abort_hooks: dict[int, Callable[[], None]] = {}  # id(cancel event) -> wakes its blocked read
GONE_KEEP_SECONDS = 3600.0


class DownloadCancelled(ImageError):
    """Every VM that wanted the image was deleted while it downloaded: the partial file is removed."""


@contextlib.contextmanager
def wanted(url: str, uid: str | None) -> Iterator[threading.Event]:
    """While the block runs, the VM ``uid`` wants ``url``; yields the URL's cancel event, which
    :func:`withdraw` sets once no VM wants it any more. Without a uid, nobody can withdraw it."""
    who = uid if uid is not None else f"anonymous-{threading.get_ident()}"
    with _wants_lock:
        if uid is not None and uid in _gone:
            raise DownloadCancelled(f"download of {url} not started: its VM is being deleted")
        _wanted_by.setdefault(url, set()).add(who)
        cancel = _cancels.get(url)
        if cancel is None or cancel.is_set():  # a cancelled download still ending: the next one is new
            cancel = _cancels[url] = threading.Event()
    try:
        yield cancel
    finally:
        with _wants_lock:
            wanters = _wanted_by.get(url, set())
            wanters.discard(who)
            if not wanters:
                _wanted_by.pop(url, None)
                _cancels.pop(url, None)


def withdraw(uid: str) -> list[str]:
    """The VM ``uid`` is being deleted: it wants no image any more. Cancels the downloads no other
    VM wants (their loops see the event within one chunk or one read timeout); returns their URLs."""
    now = time.monotonic()
    cancelled = []
    with _wants_lock:
        _gone[uid] = now
        for old in [u for u, t in _gone.items() if now - t > GONE_KEEP_SECONDS]:
            del _gone[old]
        for url, wanters in _wanted_by.items():
            if uid in wanters:
                wanters.discard(uid)
                if not wanters:
                    _cancels[url].set()
                    cancelled.append(url)
        hooks = [_abort_hooks.get(id(_cancels[url])) for url in cancelled]
    for hook in hooks:
        if hook is not None:
            with contextlib.suppress(Exception):
                hook()
    for url in cancelled:
        log.info("image download cancelled: no VM wants it", extra={"url": url, "vm": uid})
    return cancelled


@dataclass(frozen=True)
class CachedImage:
    path: Path
    format: str
    virtual_size: int
    url: str = ""
    sha256: str = ""  # hex digest of the cached content
    size: int = 0  # bytes on the wire / in the cache file


def images_dir(root: Path) -> Path:
    root = Path(root)
    return root / "images"


def cache_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def cache_path(url: str, root: Path) -> Path:
    """Where the image for ``url`` lives (whether or not it is downloaded yet)."""
    return images_dir(root) / f"{cache_key(url)}.img"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _parse_checksum(checksum: str | None) -> str | None:
    if checksum is None:
        return None
    algo, _, hexd = checksum.partition(":")
    if algo.lower() != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexd):
        raise ImageError(f"checksum must be 'sha256:<64 hex digits>', got {checksum!r}")
    return hexd.lower()


def _load_cached(path: Path) -> CachedImage | None:
    side = _sidecar(path)
    if not (side.exists() and path.exists()):
        return None
    try:
        meta = json.loads(side.read_text())
        return CachedImage(
            path=path,
            format=meta["format"],
            virtual_size=int(meta["virtualSize"]),
            url=meta["url"],
            sha256=meta["sha256"],
            size=int(meta["size"]),
        )
    except (ValueError, KeyError, OSError):
        return None


def ensure_image(
    url: str,
    checksum: str | None = None,
    root: Path | None = None,
    policy: FetchPolicy | None = None,
    wanted_by: str | None = None,
) -> CachedImage:
    """Return the cached image for ``url``, downloading (once) and verifying it if needed.

    ``root``: the node's storage root (Settings.storage_root); required, it has no default.
    ``policy``: the node's download rules (Settings.image_fetch); without it, the defaults.
    ``wanted_by``: the uid of the VM that needs it; once every VM that wanted a running download
    is withdrawn (:func:`withdraw`), the download stops with :class:`DownloadCancelled`.
    """
    if root is None:
        raise TypeError("ensure_image() needs root, the node's storage root")
    want = _parse_checksum(checksum)
    d = ensure_dir(ensure_dir(Path(root)) / "images", DIR_MODE)
    path = cache_path(url, root)
    cached = _load_cached(path)
    if cached is None:
        with wanted(url, wanted_by) as cancel, locked(path.with_suffix(".lock")):
            cached = _load_cached(path)  # someone else may have finished while we waited
            if cached is None:
                if cancel.is_set():
                    raise DownloadCancelled(f"download of {url} cancelled: no VM wants it any more")
                return _download(url, path, d, want, policy or FetchPolicy(), cancel)
    with contextlib.suppress(OSError):
        os.utime(_sidecar(path))  # last use, for the cache's garbage collection (prune_unused)
    if want is not None and cached.sha256 != want:
        raise ImageError(
            f"checksum mismatch for {url}: the cached image has sha256:{cached.sha256} but "
            f"sha256:{want} was requested (a cached image is never replaced because overlays depend "
            f"on it; publish new content under a new URL)"
        )
    return cached


def _open(url: str, policy: FetchPolicy) -> tuple[IO[bytes], int | None]:
    try:
        resp, length = image_fetch.open_image(url, policy, USER_AGENT)
    except image_fetch.FetchRefused as e:
        raise ImageError(f"refused to fetch the image: {e}") from e
    except urllib.error.HTTPError as e:
        raise ImageError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise ImageError(f"cannot reach {url}: {e.reason}") from e
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise ImageError(f"cannot reach {url}: {e}") from e
    if length is not None and length > policy.max_bytes:
        resp.close()
        raise ImageError(f"{url} is {length} bytes, more than this node's image limit of {policy.max_bytes} "
                         "bytes (K3SVIRT_IMAGE_MAX_BYTES)")  # fmt: skip
    return resp, length


def space_problem(url: str, free: int, still_to_write: int, written: int, reserve: int) -> str | None:
    """Why a download may not go on (None: it may). It may never eat the node's free-space reserve:
    checked with the declared length before the first byte, and with what is free after every chunk
    (a server that declares no length, or other writers on the same filesystem)."""
    if free - still_to_write >= reserve:
        return None
    what = f"stopped after {written} bytes" if written else "refused"
    need = f"it needs {still_to_write} more bytes, " if still_to_write else ""
    return (
        f"download of {url} {what}: {need}the node's storage has {free} bytes free and keeps "
        f"{reserve} in reserve (K3SVIRT_STORAGE_RESERVE_BYTES); it is retried when space returns"
    )


def _check_space(url: str, d: Path, expected: int | None, written: int, policy: FetchPolicy) -> None:
    still = max((expected or 0) - written, 0)
    problem = space_problem(url, shutil.disk_usage(d).free, still, written, policy.reserve_bytes)
    if problem:
        raise InsufficientStorage(problem)


def _download(
    url: str, path: Path, d: Path, want: str | None, policy: FetchPolicy, cancel: threading.Event | None = None
) -> CachedImage:
    tmp = d / f".{path.name}.{os.getpid()}.part"
    h = hashlib.sha256()
    size = 0
    t0 = time.monotonic()
    try:
        resp, expected = _open(url, policy)
        try:
            _check_space(url, d, expected, 0, policy)
        except BaseException:
            resp.close()
            raise
        head = b""
        cancel = cancel or threading.Event()

        def cancelled() -> None:
            if cancel.is_set():
                raise DownloadCancelled(f"download of {url} cancelled after {size} bytes: no VM wants it any more")

        with resp, open(tmp, "wb") as out, shutdown.on_stop(lambda: _abort(resp)), _on_cancel(cancel, resp):
            while True:
                shutdown.check(f"download of {url}")
                cancelled()
                if time.monotonic() - t0 > policy.deadline_seconds:
                    raise ImageError(f"download of {url} took longer than {policy.deadline_seconds:.0f} s "
                                     "(K3SVIRT_IMAGE_DEADLINE_SECONDS)")  # fmt: skip
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as e:
                    shutdown.check(f"download of {url}")
                    cancelled()
                    raise ImageError(f"download of {url} failed after {size} bytes: {e}") from e
                if not chunk:
                    break
                if len(head) < 512:
                    head += chunk[: 512 - len(head)]
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
                _check_space(url, d, expected, size, policy)
                if size > policy.max_bytes:
                    raise ImageError(f"{url} is larger than this node's image limit of {policy.max_bytes} bytes "
                                     "(K3SVIRT_IMAGE_MAX_BYTES)")  # fmt: skip
            out.flush()
            os.fsync(out.fileno())
        shutdown.check(f"download of {url}")  # a stop ends a blocked read as if the body had ended
        cancelled()
        if expected is not None and expected != size:
            raise ImageError(f"download of {url} ended after {size} of {expected} bytes")
        digest = h.hexdigest()
        if want is not None and digest != want:
            raise ImageError(f"checksum mismatch for {url}: got sha256:{digest}, expected sha256:{want}")
        fmt, vsize = _validate_image(url, tmp, head, size)
        os.chmod(tmp, IMAGE_MODE)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {
        "url": url,
        "sha256": digest,
        "size": size,
        "format": fmt,
        "virtualSize": vsize,
        "downloadedAt": int(time.time()),
    }
    side_tmp = d / f".{path.stem}.json.{os.getpid()}.part"
    side_tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.chmod(side_tmp, IMAGE_MODE)
    os.rename(side_tmp, _sidecar(path))
    log.info(
        "cached image",
        extra={
            "url": url,
            "path": str(path),
            "bytes": size,
            "format": fmt,
            "seconds": round(time.monotonic() - t0, 2),
        },
    )
    return CachedImage(path=path, format=fmt, virtual_size=vsize, url=url, sha256=digest, size=size)


@contextlib.contextmanager
def _on_cancel(cancel: threading.Event, resp: object) -> Iterator[None]:
    """While the block runs, :func:`withdraw` also wakes a read blocked on a stalled server."""
    with _wants_lock:
        _abort_hooks[id(cancel)] = lambda: _abort(resp)
        hit = cancel.is_set()
    try:
        if hit:
            _abort(resp)
        yield
    finally:
        with _wants_lock:
            _abort_hooks.pop(id(cancel), None)


def _abort(resp: object) -> None:
    """Wake a read blocked on the response's socket (close() alone would not interrupt it)."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _validate_image(url: str, tmp: Path, head: bytes, size: int) -> tuple[str, int]:
    if size == 0:
        raise ImageError(f"{url} is not a disk image: it is empty")
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise ImageError(f"{url} is a {kind}-compressed file, not a disk image; decompress it first")
    # The format is decided here from the magic, never probed by qemu-img: only raw and qcow2 exist
    # for us, so a VMDK descriptor (or any other format that names files) is just raw bytes.
    fmt = "qcow2" if head.startswith(QCOW2_MAGIC) else "raw"
    try:
        info = qemu_img_info(tmp, fmt)
    except StorageError as e:
        raise ImageError(f"{url} is not a usable {fmt} disk image: {e}") from e
    if fmt == "raw":
        stripped = head.lstrip().lower()
        if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
            raise ImageError(f"{url} is not a disk image: it looks like a text/HTML/JSON document")
        if size % 512:
            raise ImageError(f"{url} is not a disk image: raw size {size} is not a multiple of 512 bytes")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageError(f"{url} refers to a backing file ({info['backing-filename']}); refusing to use it")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise ImageError(f"{url} uses an external data file; refusing to use it")
    return fmt, int(info.get("virtual-size", size))


def _overlay_backings(root: Path) -> set[Path]:
    """Backing files referenced by the disks and snapshots under <root>/vms (safety net for prune_unused)."""
    used: set[Path] = set()
    vms = root / "vms"
    if not vms.is_dir():
        return used
    # Snapshots of overlays are overlays on the same base (snapshot_store.py): they count as users.
    for disk in [*vms.glob("*/*/*.qcow2"), *vms.glob("*/*/snapshots/*/*.qcow2")]:
        try:
            info = qemu_img_info(disk, "qcow2")
        except StorageError:
            continue
        b = info.get("full-backing-filename") or info.get("backing-filename")
        if b:
            used.add(Path(b))
    return used


def prune_unused(root: Path, in_use: Iterable[Path] = (), idle_seconds: float = 0.0) -> list[Path]:
    """Delete cached images not in ``in_use``, not backing any overlay under <root>/vms, and not used
    (downloaded or asked for) in the last ``idle_seconds``.

    Also removes stale partial downloads. Returns the removed image paths.
    """
    root = Path(root)
    d = images_dir(root)
    if not d.is_dir():
        return []
    keep = {Path(p).resolve() for p in in_use} | {p.resolve() for p in _overlay_backings(root)}
    removed: list[Path] = []
    for img in sorted(d.glob("*.img")):
        if img.resolve() in keep:
            continue
        with contextlib.suppress(OSError):
            if time.time() - _sidecar(img).stat().st_mtime < idle_seconds:
                continue
        with locked(img.with_suffix(".lock")):
            with contextlib.suppress(OSError):
                if time.time() - _sidecar(img).stat().st_mtime < idle_seconds:
                    continue  # used while we waited for the lock
            _sidecar(img).unlink(missing_ok=True)
            img.unlink(missing_ok=True)
        removed.append(img)
        log.info("pruned cached image", extra={"path": str(img)})
    for part in d.glob(".*.part"):
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > 24 * 3600:
                part.unlink()
    return removed

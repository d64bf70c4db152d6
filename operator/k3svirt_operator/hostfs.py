"""Host-side primitives the VM storage and the image cache share: directories with fixed modes and
qemu-img runs (stopped with the operator, errors as StorageError)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import shutdown

QEMU_IMG = "qemu-img"
QEMU_IMG_TIMEOUT = 600  # seconds; a full preallocation of a large raw disk can take a while
DIR_MODE = 0o755


class StorageError(RuntimeError):
    """Creating/inspecting storage failed at execution time (qemu-img failure, missing volume...)."""


class InsufficientStorage(StorageError):
    """A disk is larger than the node allows, or creating it (or downloading its image) would eat the
    node's free-space reserve."""


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """mkdir -p with explicit modes (umask-independent) for the leaf dir."""
    path.mkdir(parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o7777) != mode:
        os.chmod(path, mode)
    return path


def run_qemu_img(argv: Sequence[str], timeout: float = QEMU_IMG_TIMEOUT) -> str:
    """Run one qemu-img argv; raise StorageError with its stderr on failure."""
    try:
        proc = shutdown.run(argv, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise StorageError(f"{' '.join(argv)}: timed out after {timeout}s") from e
    except OSError as e:
        raise StorageError(f"{argv[0]}: cannot run: {e}") from e
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        raise StorageError(f"{' '.join(argv)} failed (exit {proc.returncode}): {err}")
    return proc.stdout


def qemu_img_info(path: Path, fmt: str | None = None, timeout: float = 60) -> dict[str, Any]:
    """``qemu-img info --output=json -U`` (-U: works while a running VM holds the image lock)."""
    argv = [QEMU_IMG, "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    argv.append(str(path))
    return json.loads(run_qemu_img(argv, timeout=timeout))

"""cloud-init NoCloud seed ISO (volume label ``cidata``) for ``spec.cloudInit``.

Files: ``user-data``, ``meta-data`` (``instance-id`` = VM uid, ``local-hostname`` = VM name, unless
``metaData`` sets them), ``network-config`` (only when ``networkData`` is given).

``sshAuthorizedKeys`` are merged into user-data:
- ``#cloud-config``: added to top-level ``ssh_authorized_keys`` (keys the user already lists are
  kept, duplicates dropped). When the document has no ``ssh_authorized_keys`` yet, the user's text
  is kept verbatim (comments included) and a block is appended; otherwise it is re-serialised.
- a script (``#!``) or other single-part types (``#include``, ``#cloud-boothook`` ...): wrapped in a
  MIME multipart with a ``text/cloud-config`` part carrying the keys (fixed boundary: deterministic).
- absent: a minimal ``#cloud-config`` (with the keys, if any).
- MIME / jinja / cloud-config-archive user-data cannot be merged into: an error when keys are given.

Checks here are only those the CRD cannot make (the spec reaching this module passed the CRD schema,
merged with its template: templates.validate_merged): the content of the YAML strings (valid YAML,
#cloud-config a mapping, ssh_authorized_keys a list, networkData version 1 or 2, metaData a mapping) and
whether keys can be merged into the user-data's kind. Types, sizes and the key pattern are CRD rules.

Determinism: the seed content digest (``seed_digest``) depends only on the inputs, and the ISO bytes
are made reproducible too (fixed file timestamps + the volume-descriptor and Rock Ridge timestamps
genisoimage takes from the clock are normalised). ``build_seed`` skips the rebuild when
``<out>.sha256`` holds the same digest and the ISO exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from k3svirt_common import safeyaml

from . import shutdown

log = logging.getLogger(__name__)

SEED_FORMAT_VERSION = "1"  # bump when the rendering changes, so existing seeds get rebuilt
FIXED_EPOCH = 946684800  # 2000-01-01T00:00:00Z, used for every timestamp in the ISO
MIME_BOUNDARY = "==k3svirt-cloudinit-boundary=="
FIELD = "spec.cloudInit"

_SINGLE_PART_TYPES = {
    "#!": "text/x-shellscript",
    "#include-once": "text/x-include-once-url",
    "#include": "text/x-include-url",
    "#cloud-boothook": "text/cloud-boothook",
    "#part-handler": "text/part-handler",
    "#upstart-job": "text/upstart-job",
}
_UNMERGEABLE = ("#cloud-config-archive", "#cloud-config-jsonp", "## template: jinja", "content-type:")


class CloudInitError(ValueError):
    """Invalid spec.cloudInit; the message starts with the field path."""


class SeedBuildError(RuntimeError):
    """The ISO tool failed."""


def _yaml_error(fieldname: str, e: yaml.YAMLError) -> CloudInitError:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    return CloudInitError(f"{FIELD}.{fieldname}: invalid YAML{where}: {problem}")


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)


def _keys(cloud_init: Mapping[str, Any]) -> list[str]:
    """The keys, stripped, each once. The CRD already refuses a non-list, an empty key and a key with a
    control character (pattern on sshAuthorizedKeys[]), for the merged spec too (validate_merged)."""
    return list(dict.fromkeys(k.strip() for k in cloud_init.get("sshAuthorizedKeys") or []))


def _first_line(text: str) -> str:
    return text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r").rstrip()


def render_user_data(user_data: str | None, keys: list[str]) -> str:
    """user-data text with ``keys`` merged in (see module doc)."""
    keys = list(dict.fromkeys(k.strip() for k in keys if k.strip()))
    if user_data is None or not user_data.strip():
        doc: dict[str, Any] = {"ssh_authorized_keys": keys} if keys else {}
        return "#cloud-config\n" + (_dump(doc) if doc else "")
    first = _first_line(user_data)
    low = first.lower()
    if first == "#cloud-config":
        try:
            doc = safeyaml.load(user_data)
        except yaml.YAMLError as e:
            raise _yaml_error("userData", e) from e
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise CloudInitError(f"{FIELD}.userData: #cloud-config must be a YAML mapping, got {type(doc).__name__}")
        if not keys:
            return user_data
        existing = doc.get("ssh_authorized_keys")
        if existing is None:
            appended = user_data + ("" if user_data.endswith("\n") else "\n") + _dump({"ssh_authorized_keys": keys})
            try:
                if safeyaml.load(appended) == {**doc, "ssh_authorized_keys": keys}:
                    return appended
            except yaml.YAMLError:
                pass
            doc = {**doc, "ssh_authorized_keys": keys}
        else:
            if not isinstance(existing, list):
                raise CloudInitError(f"{FIELD}.userData: ssh_authorized_keys must be a list")
            have = {str(k).strip() for k in existing}
            doc = {**doc, "ssh_authorized_keys": existing + [k for k in keys if k not in have]}
        return "#cloud-config\n" + _dump(doc)
    if any(low.startswith(p) for p in _UNMERGEABLE):
        if keys:
            raise CloudInitError(
                f"{FIELD}.sshAuthorizedKeys: cannot be merged into userData starting with {first!r}; "
                f"put the keys into your user-data instead"
            )
        return user_data
    for prefix, ctype in _SINGLE_PART_TYPES.items():
        if first.startswith(prefix):
            if not keys:
                return user_data
            return _multipart(
                [
                    ("text/cloud-config", "#cloud-config\n" + _dump({"ssh_authorized_keys": keys})),
                    (ctype, user_data),
                ]
            )
    raise CloudInitError(
        f"{FIELD}.userData: must start with '#cloud-config', '#!' (a script), '#include', "
        f"'#cloud-boothook' or 'Content-Type:' (MIME); got first line {first[:40]!r}"
    )


def _multipart(parts: list[tuple[str, str]]) -> str:
    out = [
        f'Content-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"',
        "MIME-Version: 1.0",
        "",
    ]
    for i, (ctype, body) in enumerate(parts):
        out += [
            f"--{MIME_BOUNDARY}",
            f'Content-Type: {ctype}; charset="utf-8"',
            "MIME-Version: 1.0",
            "Content-Transfer-Encoding: 8bit",
            f'Content-Disposition: attachment; filename="part-{i:03d}"',
            "",
            body if body.endswith("\n") else body + "\n",
        ]
    out += [f"--{MIME_BOUNDARY}--", ""]
    return "\n".join(out)


def render_meta_data(name: str, uid: str, meta_data: Any) -> str:
    doc: dict[str, Any] = {"instance-id": uid, "local-hostname": name}
    if meta_data is not None and meta_data != "":
        if isinstance(meta_data, str):
            try:
                extra = safeyaml.load(meta_data)
            except yaml.YAMLError as e:
                raise _yaml_error("metaData", e) from e
        else:
            extra = meta_data
        if extra is not None and not isinstance(extra, Mapping):
            raise CloudInitError(f"{FIELD}.metaData: must be a YAML mapping")
        doc.update(extra or {})
    return _dump(doc)


def render_network_config(network_data: Any) -> str | None:
    if network_data is None or network_data == "":
        return None
    if isinstance(network_data, str):
        try:
            doc = safeyaml.load(network_data)
        except yaml.YAMLError as e:
            raise _yaml_error("networkData", e) from e
        if not isinstance(doc, Mapping):
            raise CloudInitError(f"{FIELD}.networkData: must be a YAML mapping (network config version 1 or 2)")
        text = network_data
    elif isinstance(network_data, Mapping):
        doc, text = network_data, _dump(dict(network_data))
    else:
        raise CloudInitError(f"{FIELD}.networkData: must be a YAML string")
    if "network" in doc and isinstance(doc["network"], Mapping):
        doc = doc["network"]
    if doc.get("version") not in (1, 2):
        raise CloudInitError(f"{FIELD}.networkData: 'version' must be 1 or 2")
    return text


def render_seed_files(namespace: str, name: str, uid: str, cloud_init: Mapping[str, Any] | None) -> dict[str, bytes]:
    """Pure: file name -> content of the seed. Raises CloudInitError naming the bad field."""
    ci = cloud_init or {}
    if not isinstance(ci, Mapping):
        raise CloudInitError(f"{FIELD}: must be an object")
    if not uid:
        raise CloudInitError("metadata.uid: required for the cloud-init instance-id")
    files = {
        "meta-data": render_meta_data(name, uid, ci.get("metaData")).encode(),
        "user-data": render_user_data(ci.get("userData"), _keys(ci)).encode(),
    }
    net = render_network_config(ci.get("networkData"))
    if net is not None:
        files["network-config"] = net.encode()
    return files


def seed_digest(files: Mapping[str, bytes]) -> str:
    """sha256 over the rendered seed files (render_seed_files); equal digests mean an identical seed."""
    h = hashlib.sha256(f"k3svirt-seed-v{SEED_FORMAT_VERSION}\0".encode())
    for fname in sorted(files):
        data = files[fname]
        h.update(fname.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def _iso_tool() -> list[str]:
    for tool in ("genisoimage", "mkisofs"):
        exe = shutil.which(tool)
        if exe:
            return [exe]
    exe = shutil.which("xorriso")
    if exe:
        return [exe, "-as", "mkisofs"]
    raise SeedBuildError("no ISO tool found (install genisoimage or xorriso)")


def build_seed(
    namespace: str,
    name: str,
    uid: str,
    cloud_init: Mapping[str, Any] | None,
    out: Path,
    mode: int = 0o644,
) -> Path:
    """Write the NoCloud seed ISO to ``out`` (atomically) unless an identical one is there.

    The digest of the content is stored next to it in ``<out>.sha256``.
    """
    out = Path(out)
    files = render_seed_files(namespace, name, uid, cloud_init)
    digest = seed_digest(files)
    stamp = out.with_name(out.name + ".sha256")
    if out.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_iso = out.with_name(f".{out.name}.tmp")
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=out.parent) as staging:
        sdir = Path(staging) / "cidata"
        sdir.mkdir()
        for fname, data in files.items():
            f = sdir / fname
            f.write_bytes(data)
            os.chmod(f, 0o644)
            os.utime(f, (FIXED_EPOCH, FIXED_EPOCH))
        os.chmod(sdir, 0o755)
        os.utime(sdir, (FIXED_EPOCH, FIXED_EPOCH))
        argv = [
            *_iso_tool(), "-quiet", "-output", str(tmp_iso), "-volid", "cidata",
            "-joliet", "-rock", "-input-charset", "utf-8", str(sdir),
        ]  # fmt: skip
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(FIXED_EPOCH)}
        try:
            proc = shutdown.run(argv, timeout=60, env=env)
        except (OSError, subprocess.TimeoutExpired, shutdown.Stopped) as e:
            tmp_iso.unlink(missing_ok=True)
            if isinstance(e, shutdown.Stopped):
                raise
            raise SeedBuildError(f"{argv[0]}: {e}") from e
        if proc.returncode != 0:
            tmp_iso.unlink(missing_ok=True)
            raise SeedBuildError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    try:
        normalize_iso_timestamps(tmp_iso, FIXED_EPOCH)
        os.chmod(tmp_iso, mode)
        os.rename(tmp_iso, out)
    except BaseException:
        tmp_iso.unlink(missing_ok=True)
        raise
    stamp_tmp = stamp.with_name(f".{stamp.name}.tmp")
    stamp_tmp.write_text(digest + "\n")
    os.rename(stamp_tmp, stamp)
    log.info("built cloud-init seed", extra={"path": str(out), "digest": digest, "vm": f"{namespace}/{name}"})
    return out


# ---------------------------------------------------------------------------------------------
# ISO 9660 timestamp normalisation (flat image as written above: root dir + files, RR + Joliet)
_SECTOR = 2048


def _date17(epoch: int) -> bytes:
    import time as _t

    tm = _t.gmtime(epoch)
    return _t.strftime("%Y%m%d%H%M%S", tm).encode() + b"00" + b"\x00"


def _date7(epoch: int) -> bytes:
    import time as _t

    tm = _t.gmtime(epoch)
    return bytes([tm.tm_year - 1900, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, 0])


def normalize_iso_timestamps(path: Path, epoch: int = FIXED_EPOCH) -> None:
    """Set every timestamp of a flat ISO 9660 (+Rock Ridge/Joliet) image to ``epoch`` in place."""
    d17, d7 = _date17(epoch), _date7(epoch)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
    lba = 16
    seen_dirs: set[int] = set()
    while (lba + 1) * _SECTOR <= len(data):
        vd = lba * _SECTOR
        vtype = data[vd]
        if data[vd + 1 : vd + 6] != b"CD001":
            raise SeedBuildError(f"{path}: not an ISO 9660 image")
        if vtype == 255:
            break
        if vtype in (1, 2):
            for off in (813, 830, 847, 864):
                if off == 847:  # expiration date: "not specified" (all '0', tz 0)
                    data[vd + off : vd + off + 17] = b"0" * 16 + b"\x00"
                else:
                    data[vd + off : vd + off + 17] = d17
            root = vd + 156
            data[root + 18 : root + 25] = d7
            extent, size = (
                struct.unpack_from("<I", data, root + 2)[0],
                struct.unpack_from("<I", data, root + 10)[0],
            )
            if extent not in seen_dirs:
                seen_dirs.add(extent)
                _normalize_dir(data, extent * _SECTOR, size, d7, d17)
        lba += 1
    with open(path, "r+b") as f:
        f.write(data)


def _normalize_dir(data: bytearray, start: int, size: int, d7: bytes, d17: bytes) -> None:
    pos, end = start, start + size
    while pos < end:
        rlen = data[pos]
        if rlen == 0:  # records never straddle sectors: skip to the next one
            pos = (pos // _SECTOR + 1) * _SECTOR
            continue
        data[pos + 18 : pos + 25] = d7
        name_len = data[pos + 32]
        su = pos + 33 + name_len + (0 if name_len % 2 else 1)
        _normalize_susp(data, su, pos + rlen, d7, d17)
        pos += rlen


def _normalize_susp(data: bytearray, pos: int, end: int, d7: bytes, d17: bytes) -> None:
    while pos + 4 <= end:
        sig, ln = bytes(data[pos : pos + 2]), data[pos + 2]
        if ln < 4 or pos + ln > end:
            return
        if sig == b"TF":
            flags = data[pos + 4]
            width = 17 if flags & 0x80 else 7
            stamp = d17 if width == 17 else d7
            count = bin(flags & 0x7F).count("1")
            for i in range(count):
                o = pos + 5 + i * width
                if o + width <= pos + ln:
                    data[o : o + width] = stamp
        pos += ln

"""Manage gateway API keys.

    python -m k3svirt_gateway.keys add <name> [--role read|operate|admin] [--namespaces NS1,NS2|*] --file PATH
    python -m k3svirt_gateway.keys add <name> --role admin --secret NAMESPACE/NAME   (writes a Secret)
    python -m k3svirt_gateway.keys list --file PATH        (name, role, namespaces; tab-separated)
    python -m k3svirt_gateway.keys remove <name> --file PATH

`add` prints the new key once on stdout; only its SHA-256 hash is stored. --namespaces limits the key
to those namespaces (default `*`: all, which cluster-wide routes need); see auth.py for the roles.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys

from k3svirt_common.kube import ApiError, Client, core_path, load_config

from . import config
from .auth import ALL_NAMESPACES, ROLES, SECRET_DATA_KEY, format_entry, parse_keys, parse_scope

KEY_PREFIX = "k3sv_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _without(text: str, name: str) -> str:
    lines = [
        ln for ln in text.splitlines() if not ln.strip() or ln.lstrip().startswith("#") or ln.split(":", 1)[0] != name
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def _secret_text(api: Client, ns: str, name: str) -> str:
    sec = api.get_or_none(core_path("secrets", ns, name))
    if sec is None:
        return ""
    raw = (sec.get("data") or {}).get(SECRET_DATA_KEY, "")
    return base64.b64decode(raw).decode() if raw else ""


def _secret_write(api: Client, ns: str, name: str, text: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "Opaque",
        "data": {SECRET_DATA_KEY: base64.b64encode(text.encode()).decode()},
    }
    try:
        api.replace(core_path("secrets", ns, name), body)
    except ApiError as exc:
        if exc.status != 404:
            raise
        api.create(core_path("secrets", ns), body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m k3svirt_gateway.keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("add", "remove", "list"):
        sp = sub.add_parser(cmd)
        if cmd != "list":
            sp.add_argument("name")
        if cmd == "add":
            sp.add_argument("--role", choices=ROLES, default="read")
            sp.add_argument(
                "--namespaces",
                default=ALL_NAMESPACES,
                help="comma-separated namespaces the key may use, or * for all (default)",
            )
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--file", default=config.settings()["API_KEYS_FILE"])
        where.add_argument("--secret", help="NAMESPACE/NAME of the Secret holding the keys")
    args = p.parse_args(argv)
    if not args.file and not args.secret:
        p.error("--file PATH (or K3SVIRT_API_KEYS_FILE) or --secret NAMESPACE/NAME is required")
    if getattr(args, "name", None) is not None and (":" in args.name or not args.name.strip()):
        p.error("key name must be non-empty and contain no ':'")

    if getattr(args, "namespaces", None) is not None:
        try:
            parse_scope(args.namespaces)
        except ValueError as exc:
            p.error(f"--namespaces: {exc}")
    if args.secret and not all(args.secret.partition("/")[::2]):
        p.error("--secret must be NAMESPACE/NAME")
    try:
        return _run(args)
    except ApiError as exc:
        print(f"Kubernetes API: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    api: Client | None = None
    ns, _, sname = (args.secret or "").partition("/")
    if args.secret:
        api = Client(load_config())
        text = _secret_text(api, ns, sname)
    else:
        text = _read(args.file)

    if args.cmd == "list":
        for e in parse_keys(text):
            print(f"{e.name}\t{e.role}\t{e.scope_text()}")
        return 0
    if args.cmd == "remove":
        if args.name not in {e.name for e in parse_keys(text)}:
            print(f"no key named {args.name!r}", file=sys.stderr)
            return 1
        text = _without(text, args.name)
    else:
        key = new_key()
        text = _without(text, args.name) + format_entry(args.name, args.role, key, args.namespaces) + "\n"
    if api is not None:
        _secret_write(api, ns, sname, text)
    else:
        _write(args.file, text)
    if args.cmd == "add":
        print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())

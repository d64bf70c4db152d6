"""kubectl k3svirt: day-to-day VM operations from kubectl, through the Kubernetes API only.

Installed as the `kubectl-k3svirt` executable (kubectl finds plugins on PATH by that name) together
with `kubectl_complete-k3svirt`, which kubectl runs for shell completion of plugin arguments.

    kubectl k3svirt start|stop|restart NAME [--wait]     (stop/start like virtctl: runStrategy)
    kubectl k3svirt stats NAME                           (the VM's live figures)
    kubectl k3svirt ssh [USER@]NAME [-- SSH ARGS...]     (ssh to the VM's first IP address)
    kubectl k3svirt snapshot NAME [--name SNAP] [--wait] (a VirtualMachineSnapshot of the VM's disks)
    kubectl k3svirt restore NAME SNAP [--target NEW] [--wait]   (in place, or into a new VM NEW)
    kubectl k3svirt console NAME                         (serial console; Ctrl+] leaves)
    kubectl k3svirt expose NAME --port P [--target-port T] [--type NodePort] [--node-port N]
                                                         (a Service in front of the VM: docs/services.md)
    kubectl k3svirt completion bash|zsh

It never opens libvirt: every command reads or patches VirtualMachine objects, so it works with
the same RBAC as kubectl and from any machine that has the kubeconfig. `console` connects to the
console endpoint of the VM's node (status.consoleEndpoint) with a ticket it signs with the console
key, which it reads from the Secret k3svirt-system/k3svirt-console-key (so it needs `get` on that
Secret: cluster operators; tenants use the REST gateway's /vms/{name}/console, held to their key's
namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from . import console_ticket, names, vmservice
from .kube import ApiError, Client, load_config
from .kube.paths import core_path, k3svirt_path

PROG = "kubectl k3svirt"
COMMANDS = ("start", "stop", "restart", "stats", "ssh", "console", "snapshot", "restore", "expose", "completion")
CONSOLE_KEY_SECRET = "k3svirt-system/k3svirt-console-key"
ESCAPE = b"\x1d"  # Ctrl+], as virsh console
STATS_TIMEOUT = 5.0
# stop/start on a Manual VM cannot change runStrategy (the operator never acts on it by itself):
# they become one-shot action requests, as restart always is.
PERSISTENT = {"start": names.RunStrategy.ALWAYS, "stop": names.RunStrategy.HALTED}


class PluginError(Exception):
    """A failure worth one line on stderr (exit code 1)."""


def vm_path(namespace: str, name: str | None = None) -> str:
    return k3svirt_path(names.VM_PLURAL, namespace, name)


def snapshot_path(namespace: str, name: str | None = None) -> str:
    return k3svirt_path(names.VMSNAPSHOT_PLURAL, namespace, name)


def restore_path(namespace: str, name: str | None = None) -> str:
    return k3svirt_path(names.VMRESTORE_PLURAL, namespace, name)


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def snapshot_object(ns: str, vm: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.VMSNAPSHOT_KIND,
        "metadata": {"name": name, "namespace": ns, "labels": {names.LABEL_VM: vm}},
        "spec": {"vmName": vm},
    }


def restore_object(ns: str, vm: str, snapshot: str, name: str, target: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"snapshotName": snapshot}
    if target and target != vm:
        spec["target"] = {"name": target}
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.VMRESTORE_KIND,
        "metadata": {"name": name, "namespace": ns, "labels": {names.LABEL_VM: vm}},
        "spec": spec,
    }


def finished(obj: dict[str, Any], done: str) -> bool:
    """A snapshot (done = Ready) or restore (done = Succeeded) is finished; Failed raises with its reason."""
    status = obj.get("status") or {}
    if status.get("phase") == "Failed":
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        raise PluginError(
            f"{obj['kind']} {obj['metadata']['name']!r} failed: {ready.get('reason')}: {ready.get('message')}"
        )
    return status.get("phase") == done


def power_patch(vm: dict[str, Any], action: str, request_id: str) -> dict[str, Any]:
    """The merge patch that performs `action` on `vm`: runStrategy for start/stop (the persistent way,
    which GitOps sees), a one-shot action-request annotation for restart and for Manual VMs."""
    strategy = names.run_strategy(vm.get("spec") or {})
    if action in PERSISTENT and strategy != names.RunStrategy.MANUAL:
        return {"spec": {"runStrategy": str(PERSISTENT[action])}}
    return {"metadata": {"annotations": {names.ANNOTATION_ACTION: f"{action}/{request_id}"}}}


def action_done(vm: dict[str, Any], action: str, patch: dict[str, Any]) -> bool:
    """True once the operator has carried out the patch: the action request is recorded as done and
    the VM is in the state the action leads to."""
    status = vm.get("status") or {}
    wanted = (patch.get("metadata") or {}).get("annotations", {}).get(names.ANNOTATION_ACTION)
    if wanted and status.get("lastActionRequest") != wanted:
        return False
    if (vm.get("metadata") or {}).get("generation") != status.get("observedGeneration"):
        return False
    printable = status.get("printableStatus")
    done = names.PrintableStatus.STOPPED if action == "stop" else names.PrintableStatus.RUNNING
    return printable == done


def first_address(vm: dict[str, Any]) -> str:
    for iface in (vm.get("status") or {}).get("interfaces") or []:
        ip = iface.get("ipAddress")
        if isinstance(ip, str) and ip:
            return ip
    raise PluginError(f"VirtualMachine {vm['metadata']['name']!r} has no IP address in status.interfaces yet")


def ssh_argv(target: str, vm: dict[str, Any], extra: Sequence[str], ssh: str = "ssh") -> list[str]:
    user, _, _ = target.rpartition("@")
    ip = first_address(vm)
    return [ssh, *(["-l", user] if user else []), *extra, ip]


def expose_service(args: argparse.Namespace, namespace: str) -> dict[str, Any]:
    """The Service `expose` creates: selector-less, annotated with the selector of exactly this VM."""
    port: dict[str, Any] = {"name": args.port_name or f"p{args.port}", "port": args.port,
                            "targetPort": args.target_port or args.port, "protocol": args.protocol}  # fmt: skip
    if args.node_port is not None:
        if args.type != "NodePort":
            raise PluginError("--node-port needs --type NodePort")
        port["nodePort"] = args.node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": args.service_name or args.name,
            "namespace": namespace,
            "annotations": {vmservice.ANNOTATION_VM_SELECTOR: vmservice.vm_name_selector(args.name)},
        },
        "spec": {"type": args.type, "ports": [port]},
    }


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return value


def flatten(figures: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar leaves as ("memory.usedBytes", "1234") rows; list items by their name (disks, nics)."""
    if isinstance(figures, dict):
        rows: list[tuple[str, str]] = []
        for key, value in figures.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(figures, list):
        rows = []
        for i, item in enumerate(figures):
            label = item.get("name", item.get("id", i)) if isinstance(item, dict) else i
            rows += flatten(item, f"{prefix}[{label}]")
        return rows
    return [] if figures is None else [(prefix, str(figures))]


def format_stats(figures: dict[str, Any]) -> str:
    rows = flatten(figures)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


BASH_COMPLETION = """# kubectl k3svirt completion for bash: source <(kubectl k3svirt completion bash)
_kubectl_k3svirt() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  COMPREPLY=($(compgen -W "$(kubectl_complete-k3svirt "${COMP_WORDS[@]:1:COMP_CWORD}" | sed '/^:/d')" -- "$cur"))
}
complete -F _kubectl_k3svirt kubectl-k3svirt
"""
ZSH_COMPLETION = """#compdef kubectl-k3svirt
# kubectl k3svirt completion for zsh: source <(kubectl k3svirt completion zsh)
_kubectl_k3svirt() {
  local -a words_; words_=(${(f)"$(kubectl_complete-k3svirt ${words[2,CURRENT]} | sed '/^:/d')"})
  compadd -a words_
}
compdef _kubectl_k3svirt kubectl-k3svirt
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="VM operations for k3svirt VirtualMachines.")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="kubeconfig file (default $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("-n", "--namespace", help="namespace (default: the context's namespace)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for action, text in (("start", "start the VM and keep it running (runStrategy Always)"),
                         ("stop", "stop the VM and keep it stopped (runStrategy Halted)"),
                         ("restart", "restart the VM once (ACPI shutdown, then start)")):  # fmt: skip
        c = sub.add_parser(action, help=text, description=text)
        c.add_argument("name", help="VirtualMachine name")
        c.add_argument("--wait", action="store_true", help="wait until the operator has done it")
        c.add_argument("--timeout", type=float, default=180.0, help="seconds --wait waits (default 180)")
    c = sub.add_parser("stats", help="live CPU, memory, disk and network figures of a running VM")
    c.add_argument("name", help="VirtualMachine name")
    c.add_argument("--json", action="store_true", help="print every figure as JSON")
    c = sub.add_parser("ssh", help="ssh to the VM's first IP address (status.interfaces)")
    c.add_argument("target", help="[USER@]NAME")
    c.add_argument("ssh_args", nargs=argparse.REMAINDER, help="after --: arguments for ssh itself")
    c = sub.add_parser(
        "snapshot",
        help="snapshot the VM's disks (a running guest is paused briefly)",
        description="Creates a VirtualMachineSnapshot; the VM's node copies its disks (docs/snapshots.md).",
    )
    c.add_argument("name", help="VirtualMachine name")
    c.add_argument("--name", dest="snapshot", help="snapshot name (default <vm>-<UTC time>)")
    c.add_argument("--wait", action="store_true", help="wait until the snapshot is Ready")
    c.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")
    c = sub.add_parser(
        "restore",
        help="restore a snapshot into the VM (stopped for it) or into a new VM",
        description="Creates a VirtualMachineRestore. Without --target the VM's disks are replaced "
        "(a running VM is shut down and started again); with --target a new VM is created.",
    )
    c.add_argument("name", help="VirtualMachine the snapshot was taken of")
    c.add_argument("snapshot", help="VirtualMachineSnapshot name")
    c.add_argument("--target", help="create a new VM of this name from the snapshot (a clone)")
    c.add_argument("--wait", action="store_true", help="wait until the restore Succeeded")
    c.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")
    c = sub.add_parser("console", help="the VM's serial console (Ctrl+] leaves)")
    c.add_argument("name", help="VirtualMachine name")
    c.add_argument("--key-secret", default=CONSOLE_KEY_SECRET,
                   help=f"NAMESPACE/NAME of the console key Secret (default {CONSOLE_KEY_SECRET})")  # fmt: skip
    c.add_argument("--quiet-exit", type=float, default=2.0,
                   help="stdin not a terminal: leave once stdin ended and output paused this long (s)")  # fmt: skip
    c = sub.add_parser("expose", help="create a Service in front of the VM (ClusterIP or NodePort)")
    c.add_argument("name", help="VirtualMachine name")
    c.add_argument("--port", type=_port, required=True, help="the Service's port")
    c.add_argument("--target-port", type=_port, help="the VM's port (default: --port)")
    c.add_argument("--protocol", choices=vmservice.PROTOCOLS, default="TCP")
    c.add_argument("--type", choices=("ClusterIP", "NodePort"), default="ClusterIP")
    c.add_argument("--node-port", type=_port, help="a fixed host port (NodePort: the host's port forwarding)")
    c.add_argument("--name", dest="service_name", help="the Service's name (default: the VM's)")
    c.add_argument("--port-name", help="the port's name (default p<port>)")
    c = sub.add_parser("completion", help="print a shell completion script")
    c.add_argument("shell", choices=("bash", "zsh"))
    return p


def _client(args: argparse.Namespace) -> tuple[Client, str]:
    cfg = load_config(args.kubeconfig, args.context)
    return Client(cfg, user_agent="kubectl-k3svirt"), args.namespace or cfg.namespace


def _get_vm(client: Client, ns: str, name: str) -> dict[str, Any]:
    try:
        return client.get(vm_path(ns, name))
    except ApiError as exc:
        if exc.status == 404:
            raise PluginError(f'VirtualMachine "{name}" not found in namespace "{ns}"') from exc
        raise


def _wait(get: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        vm = get()
        if done(vm):
            return vm
        if time.monotonic() > deadline:
            st = vm.get("status") or {}
            raise PluginError(f"not done after {timeout:g} s (status {st.get('printableStatus')})")
        time.sleep(0.5)


def run_power(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    client, ns = _client(args)
    vm = _get_vm(client, ns, args.name)
    patch = power_patch(vm, args.command, uuid.uuid4().hex[:12])
    client.patch(vm_path(ns, args.name), patch)
    if args.wait:
        _wait(lambda: _get_vm(client, ns, args.name), lambda v: action_done(v, args.command, patch), args.timeout)
    verb = {"start": "started", "stop": "stopped", "restart": "restarted"}[args.command]
    out(f"virtualmachine.k3svirt.io/{args.name} {verb if args.wait else args.command + ' requested'}")
    return 0


def run_stats(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    client, ns = _client(args)
    vm = _get_vm(client, ns, args.name)
    status = vm.get("status") or {}
    if status.get("printableStatus") != "Running":
        raise PluginError(f"VirtualMachine {args.name!r} is not running (status {status.get('printableStatus')})")
    endpoint = (status.get("monitoring") or {}).get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise PluginError(f"VirtualMachine {args.name!r} has no monitoring endpoint yet")
    try:
        with urllib.request.urlopen(endpoint, timeout=STATS_TIMEOUT) as resp:  # noqa: S310 - http(s) checked above
            figures = json.load(resp)
    except (OSError, ValueError) as exc:
        raise PluginError(f"the node's monitoring endpoint {endpoint} did not answer: {exc}") from exc
    out(json.dumps(figures, indent=2, sort_keys=True) if args.json else format_stats(figures))
    return 0


def _wait_object(client: Client, path: str, done: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = client.get(path)
        if finished(obj, done):
            return obj
        if time.monotonic() > deadline:
            raise PluginError(f"not done after {timeout:g} s (phase {(obj.get('status') or {}).get('phase')})")
        time.sleep(0.5)


def run_snapshot(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    client, ns = _client(args)
    _get_vm(client, ns, args.name)
    name = args.snapshot or f"{args.name[:46]}-{stamp()}"
    client.create(snapshot_path(ns), snapshot_object(ns, args.name, name))
    if not args.wait:
        out(f"virtualmachinesnapshot.k3svirt.io/{name} created")
        return 0
    snap = _wait_object(client, snapshot_path(ns, name), "Ready", args.timeout)
    status = snap.get("status") or {}
    out(f"virtualmachinesnapshot.k3svirt.io/{name} ready ({status.get('size')}, {status.get('consistency')})")
    return 0


def run_restore(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    client, ns = _client(args)
    vm = _get_vm(client, ns, args.name)
    try:
        snap = client.get(snapshot_path(ns, args.snapshot))
    except ApiError as exc:
        if exc.status == 404:
            raise PluginError(f'VirtualMachineSnapshot "{args.snapshot}" not found in namespace "{ns}"') from exc
        raise
    if (snap.get("spec") or {}).get("vmName") != vm["metadata"]["name"]:
        raise PluginError(f"snapshot {args.snapshot!r} is not a snapshot of {args.name!r}")
    if (snap.get("status") or {}).get("phase") != "Ready":
        raise PluginError(
            f"snapshot {args.snapshot!r} is {(snap.get('status') or {}).get('phase') or 'Pending'}, not Ready"
        )
    name = f"{args.snapshot[:40]}-{stamp()}"
    client.create(restore_path(ns), restore_object(ns, args.name, args.snapshot, name, args.target))
    if args.wait:
        _wait_object(client, restore_path(ns, name), "Succeeded", args.timeout)
    target = args.target or args.name
    out(f"virtualmachinerestore.k3svirt.io/{name} {'succeeded' if args.wait else 'created'} (target {target})")
    return 0


def run_ssh(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    client, ns = _client(args)
    name = args.target.rpartition("@")[2]
    extra = args.ssh_args[1:] if args.ssh_args[:1] == ["--"] else args.ssh_args
    ssh = shutil.which("ssh")
    if ssh is None:
        raise PluginError("ssh is not installed (Debian: apt install openssh-client)")
    argv = ssh_argv(args.target, _get_vm(client, ns, name), extra, ssh)
    os.execv(ssh, argv)
    return 127  # not reached


def console_key_path(secret: str) -> str:
    """The API path of the console key Secret "NAMESPACE/NAME" (each part quoted: it cannot change the path)."""
    ns, _, name = secret.partition("/")
    try:
        return core_path("secrets", ns, name)
    except ValueError:
        raise PluginError(f"--key-secret {secret!r}: give NAMESPACE/NAME") from None


def console_key(client: Client, secret: str) -> bytes:
    import base64

    path = console_key_path(secret)
    try:
        obj = client.get(path)
    except ApiError as exc:
        if exc.status in (401, 403, 404):
            raise PluginError(
                f"cannot read the console key Secret {secret} ({exc.status}): ask a cluster operator, or use the "
                "REST gateway's /api/v1/vms/<name>/console with an API key"
            ) from exc
        raise
    key = base64.b64decode((obj.get("data") or {}).get("key", "")).strip()
    if len(key) < console_ticket.MIN_KEY_BYTES:
        raise PluginError(f"the console key Secret {secret} holds no usable key")
    return key


def run_console(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    client, ns = _client(args)
    vm = _get_vm(client, ns, args.name)
    status = vm.get("status") or {}
    if status.get("printableStatus") != "Running":
        raise PluginError(f"VirtualMachine {args.name!r} is not running (status {status.get('printableStatus')})")
    endpoint = status.get("consoleEndpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("ws://"):
        raise PluginError(f"VirtualMachine {args.name!r} has no console endpoint (the node serves no consoles)")
    ticket = console_ticket.mint(console_key(client, args.key_secret), ns, args.name, vm["metadata"]["uid"])
    try:
        ws = connect(endpoint, additional_headers={"Authorization": f"Bearer {ticket}"}, compression=None,
                     max_size=None, open_timeout=10, legacy=True)  # fmt: skip
    except InvalidStatus as exc:
        try:
            detail = json.loads(exc.response.body or b"{}").get("detail")
        except ValueError:
            detail = None
        raise PluginError(detail or f"the node refused the console (HTTP {exc.response.status_code})") from exc
    except OSError as exc:
        raise PluginError(f"the node's console endpoint {endpoint} is unreachable: {exc}") from exc
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Connected to {ns}/{args.name}; Ctrl+] leaves", file=sys.stderr)
    return _console_session(ws, interactive, args.quiet_exit, ConnectionClosed)


def _console_session(ws: Any, interactive: bool, quiet_exit: float, closed: type[Exception]) -> int:
    import threading

    last_output = [time.monotonic()]
    stdin_done = threading.Event()

    def typed() -> None:
        fd = sys.stdin.fileno()
        try:
            while True:
                data = os.read(fd, 4096)
                if not data or (interactive and ESCAPE in data):
                    if interactive:
                        ws.close(1000, "client left")
                    return
                ws.send(data)
        except (closed, OSError):
            return
        finally:
            stdin_done.set()

    saved = None
    if interactive:
        import termios
        import tty

        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setraw(sys.stdin.fileno())
    threading.Thread(target=typed, daemon=True).start()
    out = sys.stdout.buffer
    try:
        while True:
            try:
                data = ws.recv(timeout=0.5)
            except TimeoutError:
                if stdin_done.is_set() and not interactive and time.monotonic() - last_output[0] > quiet_exit:
                    ws.close(1000, "client left")
                    return 0
                continue
            except closed:
                rcvd = ws.protocol.close_rcvd
                if rcvd is not None and rcvd.reason and rcvd.reason != "client left":
                    print(f"\r\n[console closed: {rcvd.reason}]", file=sys.stderr)
                return 0
            out.write(data if isinstance(data, bytes) else data.encode())
            out.flush()
            last_output[0] = time.monotonic()
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def run_expose(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    client, ns = _client(args)
    _get_vm(client, ns, args.name)  # as kubectl expose: the object must exist
    body = expose_service(args, ns)
    created = client.create(core_path("services", ns), body)
    ports = created.get("spec", {}).get("ports") or [{}]
    node_port = f" (node port {ports[0]['nodePort']})" if ports[0].get("nodePort") else ""
    out(f"service/{created['metadata']['name']} exposed{node_port}")
    return 0


def complete(words: Sequence[str], list_vms: Callable[[], list[str]]) -> list[str]:
    """Candidates for the last word (kubectl_complete-k3svirt protocol: one per line, then a
    ':<directive>' line; 4 = no file completion)."""
    positional = [w for w in words[:-1] if not w.startswith("-")]
    if not positional:
        return [c for c in COMMANDS if c.startswith(words[-1] if words else "")]
    command = positional[0]
    prefix = words[-1] if words else ""
    if command == "completion":
        return [s for s in ("bash", "zsh") if s.startswith(prefix)]
    takes_vm = ("start", "stop", "restart", "stats", "ssh", "console", "snapshot", "restore", "expose")
    if command in takes_vm and len(positional) == 1:
        user, at, partial = prefix.rpartition("@")
        return [f"{user}{at}{n}" for n in list_vms() if n.startswith(partial)]
    return []


def namespace_flag(words: Sequence[str]) -> str | None:
    """The -n/--namespace value among the words kubectl passes to the completion program."""
    for i, w in enumerate(words):
        if w in ("-n", "--namespace") and i + 1 < len(words) - 1:
            return words[i + 1]
        if w.startswith("--namespace="):
            return w.partition("=")[2]
    return None


def complete_main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv) or [""]
    ns = namespace_flag(words)
    # Flags and their values are not positional words for complete().
    plain = [w for i, w in enumerate(words) if not (w.startswith("-") or (i and words[i - 1] in ("-n", "--namespace")))]
    if words[-1] == "" or not words[-1].startswith("-"):
        plain = plain if plain and plain[-1] == words[-1] else [*plain, words[-1]]

    def list_vms() -> list[str]:
        try:
            cfg = load_config(os.environ.get("KUBECONFIG"))
            items = Client(cfg, timeout=3.0).list(vm_path(ns or cfg.namespace)).get("items") or []
        except (ApiError, OSError):
            return []
        return sorted(i["metadata"]["name"] for i in items)

    for candidate in complete(plain, list_vms):
        print(candidate)
    print(":4")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run = {
        "start": run_power,
        "stop": run_power,
        "restart": run_power,
        "stats": run_stats,
        "ssh": run_ssh,
        "console": run_console,
        "snapshot": run_snapshot,
        "restore": run_restore,
        "expose": run_expose,
    }
    try:
        if args.command == "completion":
            print(BASH_COMPLETION if args.shell == "bash" else ZSH_COMPLETION, end="")
            return 0
        return run[args.command](args, print)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"error: the API server refused: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Which external programs the project runs, and where each one comes from on this machine.

A fresh machine has only what the install step (tests/harness/deps.sh) puts there, so every program
that the code, the tests and the scripts run must come from one of: a Debian package the install
step names (or one of Debian's required/essential packages), the machine prerequisites it names
(python3, go, git), the project's .venv, or a binary the harness builds into its cache.

Programs are found three ways: shell scripts are parsed with shfmt (every simple command, through
wrappers such as `nohup`, `env`, `timeout`), Python sources are read with `ast` (argv literals given
to subprocess), and the test session records every process Python starts (an
audit hook in the root conftest). Programs that are themselves shell scripts (virt-xml-validate runs
xmllint) are parsed in turn.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The appliance image, the build container and our container images install their own tools
# (recipes, Containerfiles; common/container/ runs inside the image builds).
NOT_ON_THIS_MACHINE = ("meta-k3svirt/", "devenv/", "common/container/")
WRAPPERS = {"nohup", "exec", "env", "timeout", "nice", "ionice", "xargs", "time", "setsid", "stdbuf", "flock"}
# Options of those wrappers that take a value as the next word (`xargs -d '\n' sha256sum`).
WRAPPER_VALUE_OPTIONS = {
    "xargs": {"-d", "-n", "-I", "-L", "-P", "-s", "-E", "-a"},
    "timeout": {"-s", "-k", "--signal", "--kill-after"},
    "env": {"-u", "-C", "-S", "--unset", "--chdir"},
    "nice": {"-n"},
    "ionice": {"-c", "-n", "-p"},
    "stdbuf": {"-i", "-o", "-e"},
    "flock": {"-w", "-E", "-c"},
}
SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call"}
# program -> the test that first started it, filled by the root conftest's audit hook
LAUNCHED: dict[str, str] = {}


def record_launch(event: str, args: tuple) -> None:
    """sys.addaudithook callback: remember the program of every subprocess.Popen of this session."""
    if event != "subprocess.Popen":
        return
    executable, argv = args[0], args[1]
    if isinstance(argv, str | bytes | os.PathLike):
        argv = [argv]
    prog = executable if executable is not None else (argv[0] if argv else None)
    if prog is None:
        return
    prog = os.fsdecode(prog)
    if "/" not in prog and " " in prog:  # a shell=True command line: its first word
        prog = prog.split()[0]
    cwd = args[2] if len(args) > 2 else None
    if "/" in prog and not os.path.isabs(prog) and cwd:  # e.g. scripts/kconfig/merge_config.sh in a tree
        prog = os.path.join(os.fsdecode(cwd), prog)
    LAUNCHED.setdefault(prog, os.environ.get("PYTEST_CURRENT_TEST", "the test session").split(" ")[0])


@dataclass(frozen=True)
class Use:
    program: str
    where: str  # file:line that runs it


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True).stdout
    return [REPO / f for f in out.splitlines() if not f.startswith(NOT_ON_THIS_MACHINE) and (REPO / f).is_file()]


def shell_scripts() -> list[Path]:
    return [f for f in tracked_files() if f.suffix == ".sh" or (f.suffix == "" and is_shell_script(str(f)))]


# ------------------------------------------------------------------------------------------ shell
def _lit(word: dict) -> str | None:
    parts = word.get("Parts") or []
    if parts and all(p.get("Type") == "Lit" for p in parts):
        return "".join(p["Value"] for p in parts)
    if len(parts) == 1 and parts[0].get("Type") in ("DblQuoted", "SglQuoted"):
        inner = parts[0].get("Parts") or []
        if parts[0]["Type"] == "SglQuoted":
            return parts[0].get("Value")
        if all(p.get("Type") == "Lit" for p in inner):
            return "".join(p["Value"] for p in inner)
    return None


def _command_name(args: list[dict]) -> str | None:
    words = [_lit(a) for a in args]
    i = 0
    while i < len(words):
        w = words[i]
        if w is None:
            return None  # "$BIN/kine", "$@": decided at run time (the session's audit hook sees Python's)
        if w in WRAPPERS:
            i += 1
            # skip the wrapper's options (and their values) and, for env/timeout, assignments and durations
            while (
                i < len(words)
                and words[i] is not None
                and (words[i].startswith("-") or "=" in words[i] or words[i].replace(".", "").isdigit())
            ):
                i += 2 if words[i] in WRAPPER_VALUE_OPTIONS.get(w, ()) else 1
            if w == "flock" and i < len(words) and words[i] is not None:
                i += 1  # flock's lock file or fd comes before the command
            continue
        if w == "command":
            return None  # `command -v X` probes for X, it does not run it
        return w
    return None


def parse_shell(path: Path) -> tuple[list[Use], set[str]]:
    """The commands a shell script runs, and the functions it defines."""
    proc = subprocess.run(["shfmt", "--to-json"], input=path.read_bytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"shfmt cannot parse {path}: {proc.stderr.decode(errors='replace')}")
    uses: list[Use] = []
    funcs: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("Type") == "FuncDecl":
                funcs.add(node["Name"]["Value"])
            if node.get("Type") == "CallExpr" and node.get("Args"):
                name = _command_name(node["Args"])
                if name:
                    uses.append(
                        Use(
                            name,
                            f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{node['Pos']['Line']}",
                        )
                    )
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(proc.stdout))
    return uses, funcs


# ----------------------------------------------------------------------------------------- python
def _module_strings(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value.value
    return out


def parse_python(path: Path) -> list[Use]:
    tree = ast.parse(path.read_text(), str(path))
    consts = _module_strings(tree)
    uses = []

    def value(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return consts.get(node.id)
        return None

    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        first = node.args[0]
        prog = None
        # (shutil.which is a probe, like `command -v`: what is then run is recorded by the audit hook)
        if (
            owner in ("subprocess", "shutdown")
            and node.func.attr in SUBPROCESS_CALLS
            and isinstance(first, ast.List | ast.Tuple)
            and first.elts
        ):
            prog = value(first.elts[0])
        if prog:
            uses.append(Use(prog, f"{path.relative_to(REPO)}:{node.lineno}"))
    return uses


# ------------------------------------------------------------------------------------- provenance
@functools.cache
def apt_packages() -> frozenset[str]:
    out = subprocess.run(
        ["bash", str(REPO / "tests/harness/deps.sh"), "--list-packages"], capture_output=True, text=True, check=True
    ).stdout
    return frozenset(out.split())


@functools.cache
def prerequisites() -> frozenset[str]:
    out = subprocess.run(
        ["bash", str(REPO / "tests/harness/deps.sh"), "--list-prerequisites"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return frozenset(out.split())


@functools.cache
def shell_builtin(name: str) -> bool:
    kind = subprocess.run(["bash", "-c", f"type -t -- {name!s}"], capture_output=True, text=True).stdout.strip()
    return kind in ("builtin", "keyword")


@functools.cache
def dpkg_owner(path: str) -> tuple[str, str] | None:
    """(package, why it is always there or '') for the Debian package that owns path."""
    usrmerged = path.replace("/usr/bin/", "/bin/").replace("/usr/sbin/", "/sbin/")
    for candidate in dict.fromkeys([path, os.path.realpath(path), usrmerged]):
        proc = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        owners = [ln for ln in proc.stdout.splitlines() if not ln.startswith(("diversion by", "local diversion"))]
        if proc.returncode == 0 and owners:
            pkg = owners[0].split(":", 1)[0].split(",")[0].strip()
            fields = subprocess.run(
                ["dpkg-query", "-W", "-f=${Priority} ${Essential}", pkg], capture_output=True, text=True
            ).stdout.split()
            base = "required" if fields[:1] == ["required"] or "yes" in fields[1:] else ""
            return pkg, base
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("K3SVIRT_CACHE") or Path(base) / "k3svirt")


def origin(program: str) -> str | None:
    """Where program comes from, or None when the install step does not provide it."""
    name = os.path.basename(program)
    if "/" in program:
        path = program if os.path.isabs(program) else str(REPO / program)
    else:
        if shell_builtin(program):
            return "shell builtin"
        found = shutil.which(program)
        if found is None:
            return None
        path = found
    real = os.path.realpath(path)
    if os.path.abspath(path).startswith(str(REPO / ".venv")) or real.startswith(str(REPO / ".venv")):
        return "the project's .venv"  # (its python links to the interpreter it came from)
    if real.startswith(str(cache_dir())):
        return "built by the harness"
    link = os.readlink(path) if os.path.islink(path) else ""
    if link.startswith("/etc/alternatives/"):
        # awk, editor, ...: any provider will do; accept the name if one of them is always installed
        providers = subprocess.run(["update-alternatives", "--list", os.path.basename(link)],
                                   capture_output=True, text=True).stdout.split()  # fmt: skip
        for candidate in providers:
            found = dpkg_owner(candidate)
            if found and (found[1] or found[0] in apt_packages()):
                return f"Debian package {found[0]} (alternative for {name})"
    owner = dpkg_owner(path)
    if owner is not None:
        pkg, base = owner
        if pkg in apt_packages():
            return f"Debian package {pkg} (install step)"
        if base:
            return f"Debian package {pkg} (required on every Debian system)"
    if name in prerequisites():
        return "machine prerequisite"
    interpreter = _interpreter(path)
    if interpreter and "/" in program and (via := origin(interpreter)):
        # a script file of a tree a test unpacked or made (a kernel source's merge_config.sh): data,
        # run by an interpreter that must itself be installed
        return f"a script run by {interpreter} ({via})"
    return None


def _interpreter(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            line = f.readline(256)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = line[2:].decode(errors="replace").split()
    if not words:
        return None
    return words[1] if os.path.basename(words[0]) == "env" and len(words) > 1 else words[0]


def package_hint(program: str) -> str:
    """A suggestion for the failure message: which Debian package has the program."""
    proc = subprocess.run(
        ["bash", "-c", f"apt-file search -x '/{program}$' 2>/dev/null | head -n1"], capture_output=True, text=True
    )
    found = shutil.which(program)
    if found and (owner := dpkg_owner(found)):
        return f"it comes from Debian package {owner[0]}: add it to APT_PACKAGES in tests/harness/deps.sh"
    if proc.stdout.strip():
        return f"Debian has it in {proc.stdout.split(':')[0]}: add that to APT_PACKAGES in tests/harness/deps.sh"
    return "install it from the install step (tests/harness/deps.sh) or build it in the harness"


def is_shell_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.startswith(b"#!") and any(s in head.split(b"\n")[0] for s in (b"/sh", b"bash"))

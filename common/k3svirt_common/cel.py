"""A small evaluator for the subset of CEL used in k3svirt's CRD `x-kubernetes-validations` rules.

The API server is the authority on these rules; this module lets the gateway and the operator
(which validates merged template results that never reach the API server) give the same answers
without a CEL dependency. Supported: literals (int, double, string, bool, null, lists), `self`
member access and indexing, `has()`, `! - * / % + - == != < <= > >= in && || ?:`, `size()`,
`.size()`, `.matches()`, `.startsWith()`, `.endsWith()`, `.contains()`, and the macros `.all()`,
`.exists()`, `.exists_one()`.

Anything else raises CelUnsupported; a runtime error (missing field, wrong type) raises CelError.
Callers treat both as "cannot decide here" and skip the rule: the API server still enforces it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["CelError", "CelUnsupported", "compile_rule"]


class CelUnsupported(Exception):
    """The rule uses CEL this evaluator does not implement."""


class CelError(Exception):
    """Evaluation error (e.g. selecting a field that is absent)."""


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<num>\d+\.\d+|\d+)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\|\||&&|==|!=|<=|>=|[!<>+\-*/%?:()\[\],.])
)""",
    re.X,
)

Env = dict[str, Any]
Node = Callable[[Env], Any]


def _tokenize(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    src = src.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise CelUnsupported(f"cannot tokenize at {src[pos : pos + 10]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    out.append(("end", ""))
    return out


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _select(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        if name not in obj:
            raise CelError(f"no such key: {name}")
        return obj[name]
    raise CelError(f"cannot select {name!r} from {type(obj).__name__}")


def _size(v: Any) -> int:
    if isinstance(v, str | list | dict | bytes):
        return len(v)
    raise CelError(f"size() of {type(v).__name__}")


def _num(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CelError(f"expected a number, got {type(v).__name__}")
    return v


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: _num(a) < _num(b) if not isinstance(a, str) else a < b,
    "<=": lambda a, b: _num(a) <= _num(b) if not isinstance(a, str) else a <= b,
    ">": lambda a, b: _num(a) > _num(b) if not isinstance(a, str) else a > b,
    ">=": lambda a, b: _num(a) >= _num(b) if not isinstance(a, str) else a >= b,
    "+": lambda a, b: a + b if type(a) is type(b) else _num(a) + _num(b),
    "-": lambda a, b: _num(a) - _num(b),
    "*": lambda a, b: _num(a) * _num(b),
    "/": lambda a, b: (_num(a) // _num(b)) if isinstance(a, int) and isinstance(b, int) else a / b,
    "%": lambda a, b: _num(a) % _num(b),
    "in": lambda a, b: a in b,
}


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise CelError(f"expected bool, got {type(v).__name__}")
    return v


class _Parser:
    def __init__(self, src: str) -> None:
        self.toks = _tokenize(src)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            raise CelUnsupported(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.cond()
        if self.peek()[0] != "end":
            raise CelUnsupported(f"unexpected {self.peek()[1]!r}")
        return node

    def cond(self) -> Node:
        c = self.or_()
        if self.peek()[1] == "?":
            self.take("?")
            a = self.cond()
            self.take(":")
            b = self.cond()
            return lambda env: a(env) if _bool(c(env)) else b(env)
        return c

    def or_(self) -> Node:
        left = self.and_()
        while self.peek()[1] == "||":
            self.take()
            right = self.and_()
            left = (lambda lf, rt: lambda env: _bool(lf(env)) or _bool(rt(env)))(left, right)
        return left

    def and_(self) -> Node:
        left = self.rel()
        while self.peek()[1] == "&&":
            self.take()
            right = self.rel()
            left = (lambda lf, rt: lambda env: _bool(lf(env)) and _bool(rt(env)))(left, right)
        return left

    def rel(self) -> Node:
        left = self.add()
        op = self.peek()[1]
        if op in ("==", "!=", "<", "<=", ">", ">=", "in"):
            self.take()
            right = self.add()
            fn = _BINOPS[op]
            return lambda env: fn(left(env), right(env))
        return left

    def add(self) -> Node:
        left = self.mul()
        while self.peek()[1] in ("+", "-"):
            fn = _BINOPS[self.take()[1]]
            right = self.mul()
            left = (lambda lf, rt, f: lambda env: f(lf(env), rt(env)))(left, right, fn)
        return left

    def mul(self) -> Node:
        left = self.unary()
        while self.peek()[1] in ("*", "/", "%"):
            fn = _BINOPS[self.take()[1]]
            right = self.unary()
            left = (lambda lf, rt, f: lambda env: f(lf(env), rt(env)))(left, right, fn)
        return left

    def unary(self) -> Node:
        if self.peek()[1] == "!":
            self.take()
            inner = self.unary()
            return lambda env: not _bool(inner(env))
        if self.peek()[1] == "-":
            self.take()
            inner = self.unary()
            return lambda env: -_num(inner(env))
        return self.member()

    def args(self) -> list[Node]:
        self.take("(")
        out: list[Node] = []
        while self.peek()[1] != ")":
            out.append(self.cond())
            if self.peek()[1] == ",":
                self.take()
        self.take(")")
        return out

    def member(self) -> Node:
        return self.member_chain()[0]

    def member_chain(self) -> tuple[Node, tuple[Node, str] | None]:
        """Parse a member chain; also return (base, field) when it ends in a field selection."""
        node = self.primary()
        last: tuple[Node, str] | None = None
        while self.peek()[1] in (".", "["):
            if self.take()[1] == "[":
                idx = self.cond()
                self.take("]")
                node = (lambda n, ix: lambda env: _index(n(env), ix(env)))(node, idx)
                last = None
                continue
            kind, name = self.take()
            if kind != "id":
                raise CelUnsupported(f"expected a field name, got {name!r}")
            if self.peek()[1] == "(":
                node = self.method(node, name)
                last = None
            else:
                last = (node, name)
                node = (lambda n, nm: lambda env: _select(n(env), nm))(node, name)
        return node, last

    def method(self, target: Node, name: str) -> Node:
        if name in ("all", "exists", "exists_one"):
            self.take("(")
            kind, var = self.take()
            if kind != "id":
                raise CelUnsupported("macro variable expected")
            self.take(",")
            body = self.cond()
            self.take(")")
            return _macro(target, name, var, body)
        args = self.args()
        if name == "size" and not args:
            return lambda env: _size(target(env))
        one = {
            "matches": lambda s, a: re.search(a, s) is not None,
            "startsWith": lambda s, a: s.startswith(a),
            "endsWith": lambda s, a: s.endswith(a),
            "contains": lambda s, a: a in s,
        }
        if name in one and len(args) == 1:
            fn, arg = one[name], args[0]

            def call(env: Env) -> Any:
                s, a = target(env), arg(env)
                if not isinstance(s, str) or not isinstance(a, str):
                    raise CelError(f"{name}() needs strings")
                return fn(s, a)

            return call
        raise CelUnsupported(f"method {name}()")

    def primary(self) -> Node:
        kind, val = self.take()
        if kind == "num":
            num: Any = float(val) if "." in val else int(val)
            return lambda env: num
        if kind == "str":
            s = _unquote(val)
            return lambda env: s
        if val == "(":
            inner = self.cond()
            self.take(")")
            return inner
        if val == "[":
            items: list[Node] = []
            while self.peek()[1] != "]":
                items.append(self.cond())
                if self.peek()[1] == ",":
                    self.take()
            self.take("]")
            return lambda env: [it(env) for it in items]
        if kind != "id":
            raise CelUnsupported(f"unexpected {val!r}")
        consts = {"true": True, "false": False, "null": None}
        if val in consts:
            c = consts[val]
            return lambda env: c
        if self.peek()[1] == "(":
            return self.function(val)
        if val == "oldSelf":
            raise CelUnsupported("transition rules (oldSelf) are not evaluated")

        def var(env: Env) -> Any:
            if val not in env:
                raise CelUnsupported(f"unknown identifier {val}")
            return env[val]

        return var

    def function(self, name: str) -> Node:
        if name == "has":
            self.take("(")
            _, last = self.member_chain()
            self.take(")")
            if last is None:
                raise CelUnsupported("has() needs a field selection")
            base, field = last

            def has(env: Env) -> bool:
                obj = base(env)
                if not isinstance(obj, dict):
                    raise CelError("has() on a non-object")
                return field in obj

            return has
        args = self.args()
        if name == "size" and len(args) == 1:
            return lambda env: _size(args[0](env))
        if name == "int" and len(args) == 1:
            return lambda env: int(args[0](env))
        if name == "string" and len(args) == 1:
            return lambda env: str(args[0](env))
        raise CelUnsupported(f"function {name}()")


def _index(obj: Any, idx: Any) -> Any:
    try:
        return obj[idx]
    except (KeyError, IndexError, TypeError) as e:
        raise CelError(f"index {idx!r}: {e}") from e


def _macro(target: Node, name: str, var: str, body: Node) -> Node:
    def run(env: Env) -> bool:
        coll = target(env)
        items = list(coll.keys()) if isinstance(coll, dict) else coll
        if not isinstance(items, list):
            raise CelError(f"{name}() on {type(coll).__name__}")
        results = (_bool(body({**env, var: it})) for it in items)
        if name == "all":
            return all(results)
        if name == "exists":
            return any(results)
        return sum(1 for r in results if r) == 1

    return run


def compile_rule(rule: str) -> Callable[[Any], bool]:
    """Compile a rule into fn(self_value) -> bool; raises CelUnsupported at compile time."""
    node = _Parser(rule).parse()

    def evaluate(value: Any) -> bool:
        return _bool(node({"self": value}))

    return evaluate

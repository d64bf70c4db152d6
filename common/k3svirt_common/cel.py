"""A small evaluator for the subset of CEL used in k3svirt's CRD `x-kubernetes-validations` rules.

The API server is the authority on these rules; this module lets the gateway and the operator
(which validates merged template results that never reach the API server) give the same answers
without a CEL dependency. Supported: literals (int, double, string, bool, null, lists), `self`
member access and indexing, `has()`, `! - * / % + - == != < <= > >= in && || ?:`, `size()`,
`.size()`, `.matches()`, `.startsWith()`, `.endsWith()`, `.contains()`, `.split()` (CEL's strings
extension), `int()`/`string()` conversions, the macros `.all()`, `.exists()`, `.exists_one()`,
`.map()`, `.filter()` (also in their two-variable form `list.all(i, v, ...)`), the lists extension's
`.flatten()` and `.sort()`, Kubernetes' list functions `.sum()`, `.min()`, `.max()` and Kubernetes'
quantity library (`quantity()`, `isQuantity()`, `.compareTo()`, `.isLessThan()`,
`.isGreaterThan()`, `.add()`, `.sub()`, `.isInteger()`, `.asInteger()`, `.asApproximateFloat()`, `.sign()`)
and `double()`. The API server's isInteger()/asInteger() answer true only on its parser's fast path
("1.5Gi" and "100Ti" are "not integers" there); ours answers mathematically, so CRD rules avoid them.

Kept rather than a PyPI CEL package: the rules need Kubernetes' own libraries (quantity, the list
functions), which a generic CEL implementation does not ship and would need as custom functions
here anyway; every CRD rule is pinned against this evaluator (common/tests/test_cel_crd_rules.py)
and the hostile-input suite checks that the API server and the gateway agree.

Anything else raises CelUnsupported (at compile time); a runtime error (missing field, wrong type)
raises CelError. The caller (`schema._kube_validations`) refuses on CelError, as the API server does
for a rule that fails to evaluate; only an unsupported rule (the transition rules on `oldSelf`, which
need the stored object) is skipped and left to the API server. test_cel_crd_rules pins which rules
those are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .quantity import quantity_value

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


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Quantity:
    """A Kubernetes quantity as CEL's quantity library sees it: an exact value."""

    value: Decimal

    def compare(self, other: Any) -> int:
        if not isinstance(other, Quantity):
            raise CelError("compareTo() needs a quantity")
        return (self.value > other.value) - (self.value < other.value)


# CEL's quantity() parses Kubernetes' grammar: digits with an optional fraction, then a binary or
# decimal suffix, milli "m" or an exponent; a leading sign is allowed.
_QUANTITY = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


def _is_quantity(s: Any) -> bool:
    return isinstance(s, str) and _QUANTITY.match(s) is not None


def _quantity(s: Any) -> Quantity:
    if not _is_quantity(s):
        raise CelError(f"quantity(): {s!r} is not a quantity")
    sign = -1 if s.startswith("-") else 1
    return Quantity(sign * quantity_value(s.lstrip("+-")))


def _as_integer(q: Quantity) -> int:
    if q.value != q.value.to_integral_value() or not INT64_MIN <= q.value <= INT64_MAX:
        raise CelError(f"cannot convert quantity {q.value} to an integer")
    return int(q.value)


def _is_integer(q: Quantity) -> bool:
    return q.value == q.value.to_integral_value() and INT64_MIN <= q.value <= INT64_MAX


_QUANTITY_METHODS: dict[str, Callable[..., Any]] = {
    "compareTo": lambda q, o: q.compare(o),
    "isLessThan": lambda q, o: q.compare(o) < 0,
    "isGreaterThan": lambda q, o: q.compare(o) > 0,
    "add": lambda q, o: Quantity(q.value + (o.value if isinstance(o, Quantity) else Decimal(_int(o)))),
    "sub": lambda q, o: Quantity(q.value - (o.value if isinstance(o, Quantity) else Decimal(_int(o)))),
    "isInteger": _is_integer,
    "asInteger": _as_integer,
    "asApproximateFloat": lambda q: float(q.value),
    "sign": lambda q: (q.value > 0) - (q.value < 0),
}


def _int(v: Any) -> int:
    """CEL's int(): ints pass, strings must be base-10 digits with an optional sign (no spaces,
    underscores or other Unicode digits, which Python's int() would accept) and fit int64."""
    if isinstance(v, bool):
        raise CelError("int() of a bool")
    if isinstance(v, int):
        out = v
    elif isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")) or not -(2.0**63) <= v < 2.0**63:
            raise CelError(f"int(): {v!r} is out of the int64 range")
        out = int(v)
    elif isinstance(v, str) and re.fullmatch(r"[+-]?[0-9]+", v, re.ASCII):
        out = int(v)
    else:
        raise CelError(f"int(): cannot convert {v!r}")
    if not INT64_MIN <= out <= INT64_MAX:
        raise CelError(f"int(): {v!r} overflows int64")
    return out


def _double(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise CelError(f"double(): cannot convert {v!r}")
    try:
        return float(v)
    except ValueError as e:
        raise CelError(f"double(): cannot convert {v!r}") from e


def _numbers(v: Any, name: str) -> list[Any]:
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int | float) for x in v):
        raise CelError(f"{name}() needs a list of numbers")
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
        if name in ("all", "exists", "exists_one", "map", "filter"):
            self.take("(")
            kind, var = self.take()
            if kind != "id":
                raise CelUnsupported("macro variable expected")
            self.take(",")
            index_var = None
            # two-variable form (CEL's comprehensions extension): list.all(i, v, ...) binds the index too
            if self.peek()[0] == "id" and self.toks[self.i + 1][1] == ",":
                index_var, var = var, self.take()[1]
                self.take(",")
            body = self.cond()
            self.take(")")
            return _macro(target, name, var, body, index_var)
        args = self.args()
        if name == "size" and not args:
            return lambda env: _size(target(env))
        if name in _QUANTITY_METHODS:
            fn_q = _QUANTITY_METHODS[name]

            def call_q(env: Env) -> Any:
                q = target(env)
                if not isinstance(q, Quantity):
                    raise CelError(f"{name}() needs a quantity")
                return fn_q(q, *(a(env) for a in args))

            return call_q
        if name in ("sum", "min", "max") and not args:
            agg: Callable[[list[Any]], Any] = {"sum": sum, "min": min, "max": max}[name]

            def call_agg(env: Env) -> Any:
                items = _numbers(target(env), name)
                if not items and name != "sum":
                    raise CelError(f"{name}() of an empty list")
                return agg(items)

            return call_agg
        if name in ("flatten", "sort") and not args:
            return _list_function(target, name)
        if name == "split" and len(args) == 1:
            sep = args[0]

            def call_split(env: Env) -> Any:
                s, a = target(env), sep(env)
                if not isinstance(s, str) or not isinstance(a, str):
                    raise CelError("split() needs strings")
                return list(s) if a == "" else s.split(a)

            return call_split
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
            return lambda env: _int(args[0](env))
        if name == "double" and len(args) == 1:
            return lambda env: _double(args[0](env))
        if name == "quantity" and len(args) == 1:
            return lambda env: _quantity(args[0](env))
        if name == "isQuantity" and len(args) == 1:
            return lambda env: _is_quantity(args[0](env))
        if name == "string" and len(args) == 1:
            return lambda env: str(args[0](env))
        raise CelUnsupported(f"function {name}()")


def _list_function(target: Node, name: str) -> Node:
    """CEL's lists extension: flatten() one level, sort() of numbers or of strings."""

    def run(env: Env) -> list[Any]:
        items = target(env)
        if not isinstance(items, list):
            raise CelError(f"{name}() needs a list")
        if name == "flatten":
            return [x for it in items for x in (it if isinstance(it, list) else [it])]
        if not (all(isinstance(x, str) for x in items) or _numbers(items, "sort")):
            raise CelError("sort() needs numbers or strings")
        return sorted(items)

    return run


def _index(obj: Any, idx: Any) -> Any:
    try:
        return obj[idx]
    except (KeyError, IndexError, TypeError) as e:
        raise CelError(f"index {idx!r}: {e}") from e


def _macro(target: Node, name: str, var: str, body: Node, index_var: str | None = None) -> Node:
    def scope(env: Env, i: int, it: Any) -> Env:
        return {**env, var: it, index_var: i} if index_var else {**env, var: it}

    def run(env: Env) -> Any:
        coll = target(env)
        if index_var is not None and not isinstance(coll, list):
            raise CelUnsupported("two-variable macros over maps")
        items = list(coll.keys()) if isinstance(coll, dict) else coll
        if not isinstance(items, list):
            raise CelError(f"{name}() on {type(coll).__name__}")
        if name == "map":
            return [body(scope(env, i, it)) for i, it in enumerate(items)]
        if name == "filter":
            return [it for i, it in enumerate(items) if _bool(body(scope(env, i, it)))]
        results = (_bool(body(scope(env, i, it))) for i, it in enumerate(items))
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

"""YAML from users, parsed with limits.

PyYAML's safe loader refuses code, but not size: a few hundred bytes of nested aliases ("billion
laughs") expand to millions of nodes, and whatever walks the result afterwards (a dump, a comparison,
a JSON encoder) takes minutes or memory without end. Every user-supplied YAML document (cloud-init
data, template imports, request bodies) goes through :func:`load` / :func:`load_all`, which count
nodes as if aliases were expanded and refuse documents that are too deep, too large or alias-heavy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 1 << 20
    max_nodes: int = 100_000  # scalars + collections, aliases counted as the nodes they stand for
    max_depth: int = 64
    max_aliases: int = 1_000


DEFAULT = Limits()


class YAMLLimitError(yaml.YAMLError):
    """The document exceeds a limit; the message says which."""


class _LimitedLoader(yaml.SafeLoader):
    def __init__(self, stream: str | bytes, limits: Limits) -> None:
        super().__init__(stream)
        self.limits = limits
        self.depth = 0
        self.total = 0
        self.aliases = 0
        self.weight: dict[int, int] = {}  # id(node) -> nodes in its subtree, aliases expanded

    def _count(self, n: int) -> None:
        self.total += n
        if self.total > self.limits.max_nodes:
            raise YAMLLimitError(f"the document expands to more than {self.limits.max_nodes} nodes")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > self.limits.max_aliases:
                raise YAMLLimitError(f"the document uses more than {self.limits.max_aliases} aliases")
            target = self.anchors.get(self.peek_event().anchor)
            if target is not None:
                self._count(self.weight.get(id(target), 1))
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise YAMLLimitError(f"the document nests deeper than {self.limits.max_depth} levels")
        before = self.total
        self._count(1)
        node = super().compose_node(parent, index)
        self.weight[id(node)] = self.total - before
        self.depth -= 1
        return node

    def compose_document(self) -> Any:
        self.weight.clear()  # anchors do not cross documents
        return super().compose_document()


def _check_size(text: str | bytes, limits: Limits) -> None:
    size = len(text.encode() if isinstance(text, str) else text)
    if size > limits.max_bytes:
        raise YAMLLimitError(f"the document is {size} bytes, more than {limits.max_bytes}")


def load(text: str | bytes, limits: Limits = DEFAULT) -> Any:
    """yaml.safe_load with limits; raises YAMLLimitError (a yaml.YAMLError) past them."""
    _check_size(text, limits)
    loader = _LimitedLoader(text, limits)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_all(text: str | bytes, limits: Limits = DEFAULT) -> Iterator[Any]:
    """yaml.safe_load_all with limits; the node budget is shared by all documents of the stream."""
    _check_size(text, limits)
    loader = _LimitedLoader(text, limits)
    try:
        while loader.check_data():
            yield loader.get_data()
    finally:
        loader.dispose()

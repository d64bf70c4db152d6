"""User YAML is parsed with limits: alias bombs, deep nesting and huge documents are refused fast."""

from __future__ import annotations

import time

import pytest
import yaml
from k3svirt_common import safeyaml

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)


def test_ordinary_documents_load_as_with_safe_load():
    text = "#cloud-config\npackages: [nginx]\nusers:\n  - name: a\n    groups: [sudo]\nbase: &b {x: 1}\nother: *b\n"
    assert safeyaml.load(text) == yaml.safe_load(text)
    assert list(safeyaml.load_all("a: 1\n---\nb: 2\n")) == [{"a": 1}, {"b": 2}]


def test_a_billion_laughs_is_refused_in_well_under_a_second():
    assert len(BOMB) < 600  # a few hundred bytes ...
    t0 = time.monotonic()
    with pytest.raises(safeyaml.YAMLLimitError, match="expands to more than"):
        safeyaml.load(BOMB)  # ... that stand for 9**9 nodes
    assert time.monotonic() - t0 < 1


def test_limit_errors_are_yaml_errors_so_callers_report_them_as_bad_yaml():
    assert issubclass(safeyaml.YAMLLimitError, yaml.YAMLError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100 + "]" * 100, "nests deeper"),
        ("x: " + "{a: " * 80 + "1" + "}" * 80, "nests deeper"),
        ("a: &a 1\nb: [" + ", ".join(["*a"] * 2000) + "]", "more than 1000 aliases"),
    ],
)
def test_depth_and_alias_counts_are_capped(text: str, message: str):
    with pytest.raises(safeyaml.YAMLLimitError, match=message):
        safeyaml.load(text)


def test_size_is_capped():
    with pytest.raises(safeyaml.YAMLLimitError, match="bytes, more than"):
        safeyaml.load("a: " + "x" * 2_000_000)
    assert safeyaml.load("a: " + "x" * 1000, safeyaml.Limits(max_bytes=2000)) == {"a": "x" * 1000}


def test_the_node_budget_spans_all_documents_of_a_stream():
    text = "---\n".join(["[" + ", ".join(["1"] * 900) + "]\n"] * 5)
    with pytest.raises(safeyaml.YAMLLimitError):
        list(safeyaml.load_all(text, safeyaml.Limits(max_nodes=4000)))


def test_cloud_init_refuses_an_alias_bomb_naming_the_field():
    pytest.importorskip("k3svirt_operator")
    from k3svirt_operator import cloudinit

    t0 = time.monotonic()
    with pytest.raises(cloudinit.CloudInitError, match=r"spec.cloudInit.userData: invalid YAML.*expands"):
        cloudinit.render_user_data("#cloud-config\n" + BOMB, ["ssh-ed25519 AAAA k"])
    assert time.monotonic() - t0 < 1

"""The one label-selector parser (gateway list cache, VM Services convention)."""

from __future__ import annotations

import pytest
from k3svirt_common.labelselector import Requirement, SelectorError, matches, parse


def test_forms_and_their_requirements():
    got = parse("a=1, b==2 , c!=3,d in (x, y),e notin (z),f,!g,example.com/h")
    assert got == [
        Requirement("a", "=", frozenset({"1"})),
        Requirement("b", "=", frozenset({"2"})),
        Requirement("c", "!=", frozenset({"3"})),
        Requirement("d", "in", frozenset({"x", "y"})),
        Requirement("e", "notin", frozenset({"z"})),
        Requirement("f", "exists"),
        Requirement("g", "!exists"),
        Requirement("example.com/h", "exists"),
    ]
    assert [r.value for r in got[:3]] == ["1", "2", "3"] and got[3].value == ""
    assert parse(None) == [] == parse("  ")


def test_match_rules_are_kubernetes():
    labels = {"a": "1", "d": "y"}
    assert matches(parse("a=1,d in (x,y),c!=3,e notin (z),!g"), labels)
    assert not matches(parse("a!=1"), labels) and not matches(parse("b=1"), labels)
    assert matches(parse("b!=1"), labels) and matches(parse("b notin (1)"), labels)  # absent keys pass != / notin
    assert matches(parse("a="), {"a": ""}) and not matches(parse("a="), {})
    assert matches([], {})


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a>1", "not a label key"),
        ("a b", "not a label key"),
        ("=x", "not a label key"),
        ("a in x", "not a label key"),
        ("Bad_Prefix/x=1", "not a label key"),
        ("a=" + "v" * 64, "not a label value"),
        ("a in (x, b c)", "not a label value"),
        ("a in ()", "at least one value"),
        ("a=1,,b=2", "empty requirement"),
        ("a=1,", "empty requirement"),
    ],
)
def test_refusals_say_why(text, words):
    with pytest.raises(SelectorError, match=words):
        parse(text)
    assert issubclass(SelectorError, ValueError)  # the list cache falls back to the API server on ValueError


def test_set_based_can_be_refused():
    with pytest.raises(SelectorError, match="set-based"):
        parse("a in (x)", set_based=False)
    assert parse("a=x", set_based=False) == [Requirement("a", "=", frozenset({"x"}))]

import pytest
from k3svirt_common.cel import CelError, CelUnsupported, compile_rule


def test_exactly_one():
    r = compile_rule("(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) == 1")
    assert r({"a": 1}) and r({"b": {}}) and not r({}) and not r({"a": 1, "b": 2})


def test_macros_and_strings():
    assert compile_rule("self.l.all(x, x.n < 3)")({"l": [{"n": 1}, {"n": 2}]})
    assert not compile_rule("self.l.exists_one(x, x > 1)")({"l": [2, 3]})
    assert compile_rule("self.s.matches('^a+$') && size(self.s) <= 3 && self.s.startsWith('a')")({"s": "aa"})
    assert compile_rule("self.x in ['a', 'b'] && !(self.y != 2)")({"x": "b", "y": 2})


def test_errors():
    with pytest.raises(CelError):
        compile_rule("self.missing == 1")({})
    with pytest.raises(CelUnsupported):
        compile_rule("self.x == oldSelf.x")
    with pytest.raises(CelError):
        compile_rule("quantity(self.x).isInteger()")({"x": "1 Gi"})
    with pytest.raises(CelError):
        compile_rule("quantity(self.x).asInteger() > 0")({"x": "0.5"})
    for bad in ("1_0", " 1", "\u0661", "99999999999999999999"):  # Python's int() takes the first three
        with pytest.raises(CelError):
            compile_rule("int(self.x) > 0")({"x": bad})
    with pytest.raises(CelUnsupported):
        compile_rule("self.x.lowerAscii() == 'a'")


def test_quantity_library():
    q = compile_rule
    assert q("quantity(self.x).isGreaterThan(quantity('1'))")({"x": "1001m"})
    assert not q("quantity(self.x).isLessThan(quantity('1Gi'))")({"x": "1073741824"})
    assert q("quantity(self.x).compareTo(quantity('1G')) == 1")({"x": "1Gi"})
    assert q("quantity(self.x).add(quantity('512Mi')).compareTo(quantity('1.5Gi')) == 0")({"x": "1Gi"})
    assert q("quantity(self.x).sub(1).asInteger() == 1023")({"x": "1Ki"})
    assert q("quantity(self.x).isInteger() && !quantity('1.5').isInteger()")({"x": "2k"})
    assert q("quantity(self.x).sign() == -1")({"x": "-5m"})
    assert q("isQuantity(self.x) && !isQuantity('5 Mi') && !isQuantity('0x10')")({"x": "1e3"})
    assert not q("quantity(self.x).isInteger()")({"x": "99999999999999999999Ti"})  # beyond int64


def test_split_map_filter_and_list_functions():
    assert compile_rule("self.x.split(',') == ['a', 'b', '']")({"x": "a,b,"})
    assert compile_rule("self.x.split(',').map(p, int(p)).sum() == 6")({"x": "1,2,3"})
    assert compile_rule("self.x.filter(n, n > 1).size() == 2 && self.x.min() == 1 && self.x.max() == 3")(
        {"x": [1, 2, 3]}
    )
    assert compile_rule("[].sum() == 0")({})
    with pytest.raises(CelError):
        compile_rule("self.x.min() == 0")({"x": []})


def test_two_variable_macros_flatten_and_sort():
    assert compile_rule("self.x.all(i, v, v == i * 10)")({"x": [0, 10, 20]})
    assert compile_rule("self.x.flatten().sort() == [1, 2, 3, 4]")({"x": [[4, 1], [3], 2]})
    assert compile_rule("['b', 'a'].sort() == ['a', 'b']")({})
    with pytest.raises(CelError):
        compile_rule("self.x.sort().size() == 2")({"x": [1, "a"]})


@pytest.mark.parametrize(
    ("cpuset", "ok"),
    [("0", True), ("0-3,4-7", True), ("7,0-1,2", True), ("1,1", False), ("0-3,3", False), ("0-9,2-3", False),
     ("5,0-4,5", False), ("3-3,2-2,1", True)],
)  # fmt: skip
def test_the_sweep_line_cpuset_rule_matches_a_set_of_cpus(cpuset: str, ok: bool):
    """The CRD's duplicate rule (events 2*lo, 2*hi+1 alternate when sorted) against a plain expansion."""
    rule = compile_rule(
        "self.split(',').map(p, [2 * int(p.split('-')[0]), 2 * int(p.split('-')[p.contains('-') ? 1 : 0]) + 1])"
        ".flatten().sort().all(i, e, e % 2 == i % 2)"
    )
    cpus = [c for part in cpuset.split(",") for c in range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)]
    assert (len(set(cpus)) == len(cpus)) is ok
    assert rule(cpuset) is ok

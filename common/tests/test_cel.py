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
    with pytest.raises(CelUnsupported):
        compile_rule("quantity(self.x).isGreaterThan(quantity('1'))")

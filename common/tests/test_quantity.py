from decimal import Decimal

import pytest
from k3svirt_common.quantity import format_bytes, parse_quantity, quantity_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512Mi", 512 * 1024**2),
        ("1Gi", 1024**3),
        ("2G", 2_000_000_000),
        ("1024", 1024),
        (1024, 1024),
        ("1.5Ki", 1536),
        ("64Ki", 65536),
        ("1e3", 1000),
        ("0", 0),
        ("1Ti", 1024**4),
        ("3k", 3000),
    ],
)
def test_parse(value, expected):
    assert parse_quantity(value) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "not a quantity"),
        ("abc", "not a quantity"),
        ("-1Gi", "not a quantity"),
        ("1Gb", "unknown suffix 'Gb'"),
        ("100m", "unknown suffix 'm'"),
        ("0.1", "whole number of bytes"),
        ("1e3Ki", "exponent"),
        (True, "expected a quantity"),
        (-5, "negative"),
        (1.5, "expected a quantity string"),
    ],
)
def test_parse_errors(value, needle):
    with pytest.raises(ValueError, match="spec.memory.size") as e:
        parse_quantity(value, field="spec.memory.size")
    assert needle in str(e.value)


def test_format_roundtrip():
    for n in (0, 1000, 1536, 512 * 1024**2, 3 * 1024**3):
        assert parse_quantity(format_bytes(n)) == n
    assert format_bytes(512 * 1024**2) == "512Mi"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("250m", Decimal("0.25")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("100Mi", Decimal(100 * 1024**2)),
        ("129e6", Decimal(129_000_000)),
        (4, Decimal(4)),
        ("0", Decimal(0)),
    ],
)
def test_quantity_value(value, expected):
    assert quantity_value(value) == expected


@pytest.mark.parametrize("value", ["", "-1", "1Gb", "1e3m", True, None])
def test_quantity_value_errors(value):
    with pytest.raises(ValueError, match="resources.limits.cpu"):
        quantity_value(value, field="resources.limits.cpu")

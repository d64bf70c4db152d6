"""Kubernetes resource quantities: sizes ("512Mi", "2G", "1.5Gi", "1024") as integer bytes, and any
quantity (CPU "250m", "1.5") as an exact Decimal."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

SUFFIXES: dict[str, int] = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
}
_RE = re.compile(r"^\s*([+]?[0-9]+(?:\.[0-9]*)?|[+]?\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z]*)\s*$")


def parse_quantity(value: str | int, *, field: str = "quantity") -> int:
    """Parse a Kubernetes quantity into bytes (an int).

    Binary ("Ki".."Ei") and decimal ("k".."E") suffixes and plain numbers (optionally with an
    exponent, "1e9") are accepted. Fractions must come out as whole bytes ("1.5Ki" = 1536;
    "0.1" is refused). Negative values, milli ("m") units and unknown suffixes raise ValueError
    naming `field`.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a quantity, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a quantity string like '512Mi', got {type(value).__name__}")
    m = _RE.match(value)
    if not m:
        raise ValueError(f"{field}: {value!r} is not a quantity (expected e.g. '512Mi', '2G', '1024')")
    number, exponent, suffix = m.groups()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{field}: unknown suffix {suffix!r} in {value!r} "
            f"(use one of {', '.join(s for s in SUFFIXES if s)} or none for bytes)"
        )
    if exponent and suffix:
        raise ValueError(f"{field}: {value!r} mixes an exponent with a suffix")
    try:
        amount = Decimal(number) * SUFFIXES[suffix] * (Decimal(10) ** int(exponent or 0))
    except InvalidOperation as e:  # pragma: no cover - the regex already guarantees a number
        raise ValueError(f"{field}: {value!r} is not a quantity") from e
    if amount != amount.to_integral_value():
        raise ValueError(f"{field}: {value!r} is not a whole number of bytes")
    return int(amount)


def quantity_value(value: str | int | float, *, field: str = "quantity") -> Decimal:
    """Any Kubernetes quantity as an exact Decimal: CPU ("250m" = 0.25, "2"), sizes ("1Gi"), fractions.

    For figures the API server already accepted (pod requests/limits, node capacity). Negative values
    and unknown suffixes raise ValueError naming `field`.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a quantity, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{field}: must not be negative, got {value}")
        return Decimal(str(value))
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a quantity string like '250m', got {type(value).__name__}")
    m = _RE.match(value)
    if not m:
        raise ValueError(f"{field}: {value!r} is not a quantity (expected e.g. '250m', '2', '512Mi')")
    number, exponent, suffix = m.groups()
    if suffix == "m":
        scale = Decimal("0.001")
    elif suffix in SUFFIXES:
        scale = Decimal(SUFFIXES[suffix])
    else:
        raise ValueError(f"{field}: unknown suffix {suffix!r} in {value!r}")
    if exponent and suffix:
        raise ValueError(f"{field}: {value!r} mixes an exponent with a suffix")
    return Decimal(number) * scale * (Decimal(10) ** int(exponent or 0))


def format_bytes(n: int) -> str:
    """The shortest exact binary quantity for `n` bytes ("512Mi", "1536Ki", "1000")."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = SUFFIXES[suffix]
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)

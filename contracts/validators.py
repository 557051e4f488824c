"""Field validators the request types share."""

from __future__ import annotations


def whole_number(value: object) -> object:
    """A body's integer field, before its strict check: JSON Schema counts 4.0 as an integer, so strict int alone
    would refuse it (and rightly refuses "4" and 4.5). `BeforeValidator(whole_number)`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value

"""The arguments' shape check (`core/bounds.py`): the first place past a limit, named by its
JSON pointer (RFC 6901: `~` written `~0`, `/` written `~1`), at any depth."""

from enum import StrEnum

import pytest

from conveyor.core.bounds import first_shape_fault

DEPTH, LENGTH = 4, 8


class Long(StrEnum):
    VALUE = "x" * 9


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ({"a": [1, {"b/c": {"d~e": "x" * 9}}]}, ("/a/1/b~1c/d~0e", "longer than 8 characters")),
        ({"a": {"b": {"c": {"d": []}}}}, ("/a/b/c/d", "nested deeper than 4 levels")),
        ({"ok": [{"k" * 9: 1}]}, ("/ok/0", "has a key longer than 8 characters")),
        ({"n": [0, 2**64]}, ("/n/1", "an integer outside the range -2^63 to 2^64 - 1")),
        ([float("inf")], ("/0", "a number too large for a double (or not a number)")),
        ({"s": "\ud800"}, ("/s", "a string holding a lone UTF-16 surrogate (\\ud800-\\udfff "
                                 "alone is no character)")),
        ({"t": (1, "x" * 9)}, ("/t/1", "longer than 8 characters")),  # a tuple, a str
        ({"e": [Long.VALUE]}, ("/e/0", "longer than 8 characters")),  # a str subclass
        ({"\udfff": 1}, ("", "a key holding a lone UTF-16 surrogate (\\ud800-\\udfff alone "
                             "is no character)")),
    ],
)  # fmt: skip
def test_the_first_fault_is_named_by_its_pointer(value: object, fault: tuple[str, str]) -> None:
    assert first_shape_fault(value, DEPTH, LENGTH) == fault


def test_values_within_every_limit_pass() -> None:
    fine = {"a": [1, 2.5, None, True, -(2**63), 2**64 - 1, {"b": "x" * 8}], "é": "ü"}
    assert first_shape_fault(fine, DEPTH, LENGTH) is None

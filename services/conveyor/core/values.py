"""Value objects: dataclasses the type checker holds frozen, left plain at run time.

A frozen dataclass's `__init__` sets each field through `object.__setattr__` (~80 ns a
field): for the four objects every accepted job passes through (its submission, its record,
the accept verdict and the answer) that was a tenth of a batched job's CPU
(bench/README.md, performance round 11). `@value` declares them to type checkers as frozen
(PEP 681: mypy refuses an assignment to a field, as it does for `frozen=True`) and makes a
plain dataclass. Unlike a frozen one it is not hashable: none of them is used as a key.
"""

from dataclasses import dataclass
from typing import TypeVar

from typing_extensions import dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value(cls: type[T]) -> type[T]:
    """A dataclass, frozen for the type checker only (see the module's docstring)."""
    return dataclass(cls)

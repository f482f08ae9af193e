"""Just enough PromQL reading for the artifact checks: the series selectors of an expression."""

import re

_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = r"[a-zA-Z_]\w*(?::\w+)+|conveyor_[a-z_]+|kube_[a-z_]+|up"
# A metric name not followed by `(` (a function such as `last_over_time` is not a selector).
_SELECTOR = re.compile(rf"\b({_NAME})\b(?!\s*\()(\{{[^}}]*\}})?")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of every series selector of `expr` ('' when it has no braces)."""
    # Blank quoted strings (label values, label_replace arguments) and by/on clauses (label
    # names), keeping every position.
    bare = re.sub(r'"[^"]*"', lambda m: '"' + "x" * (len(m.group()) - 2) + '"', expr)
    bare = _CLAUSE.sub(lambda m: " " * len(m.group()), bare)
    return [(m.group(1), expr[m.start(2) : m.end(2)] if m.group(2) else "")
            for m in _SELECTOR.finditer(bare)]  # fmt: skip

"""Rendering the chart with the real Helm engine (helm_python), offline."""

from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "conveyor"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)


def scenario_values(scenario: str) -> dict[str, Any]:
    values: dict[str, Any] = (
        yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}
    )
    return values


@cache
def render(scenario: str) -> tuple[dict[str, Any], ...]:
    """Every manifest of a scenario (NOTES.txt excluded)."""
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(scenario_values(scenario), name="conveyor", namespace="jobs")
    return tuple(
        doc
        for path, text in sorted(out.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    )


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def containers(docs: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every Deployment, StatefulSet and Pod."""
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            spec = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            spec = doc["spec"]
        else:
            continue
        found += [(doc, c) for c in spec["containers"]]
    return found

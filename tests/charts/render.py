"""Rendering the chart with the real Helm engine (helm_python), offline."""

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

# CONVEYOR_CHART lets the same tests run against another copy of the chart (e.g. the last
# release's, to see a new test fail on it).
CHART = Path(
    os.environ.get("CONVEYOR_CHART", Path(__file__).resolve().parents[2] / "charts" / "conveyor")
)
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
# What a cluster with KEDA serves (.Capabilities.APIVersions), for keda.enabled=auto.
KEDA_API = ["keda.sh/v1alpha1", "keda.sh/v1alpha1/ScaledObject"]


def scenario_values(scenario: str) -> dict[str, Any]:
    values: dict[str, Any] = (
        yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}
    )
    return values


def render_values(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    api_versions: list[str] | None = None,
    name: str = "conveyor",
    namespace: str = "jobs",
) -> tuple[dict[str, Any], ...]:
    """Every manifest the chart renders for `values` (NOTES.txt excluded).

    `api_versions` are added to .Capabilities.APIVersions like `helm template --api-versions`
    (helm_python's public render() has no such option; its native call takes it).
    """
    loaded = helm_python.Chart.load(str(chart))
    opts: dict[str, Any] = {"name": name, "namespace": namespace}
    if api_versions:
        opts["api_versions"] = api_versions
    out: dict[str, str] = json.loads(
        _native.call_string(
            "helm_render", loaded._raw(), json.dumps(values or {}), json.dumps(opts)
        )
    )
    return tuple(
        doc
        for path, text in sorted(out.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    )


def notes(values: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """The rendered NOTES.txt."""
    loaded = helm_python.Chart.load(str(kwargs.pop("chart", CHART)))
    out = loaded.render(values or {}, name="conveyor", namespace="jobs", **kwargs)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


@cache
def render(scenario: str) -> tuple[dict[str, Any], ...]:
    """Every manifest of a scenario (NOTES.txt excluded), rendered offline (no cluster)."""
    return render_values(scenario_values(scenario))


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[dict[str, Any], ...], kind: str, suffix: str) -> dict[str, Any]:
    """The one object of `kind` whose name ends with `suffix`."""
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return found


def pod_templates(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """Workload name -> pod template, for every Deployment and StatefulSet."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }


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

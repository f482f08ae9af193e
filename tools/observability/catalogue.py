"""The metric catalogue: every metric family Conveyor exports, read from the metric classes."""

from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from conveyor.telemetry.metrics import (
    EXPORTER_METRICS,
    ApiMetrics,
    BeatMetrics,
    WorkerMetrics,
    WorkflowMetrics,
)

# Components that serve their metrics from one process. prometheus-client then also exposes
# `<counter>_created` (when each labelled counter was created); the multiprocess aggregate of
# workers and the API does not.
SINGLE_PROCESS = ("beat",)


@dataclass(frozen=True)
class MetricInfo:
    """One metric family as exposed."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    component: str

    @property
    def created(self) -> str | None:
        """The `_created` series prometheus-client adds to a single-process counter."""
        if self.type != "counter" or self.component not in SINGLE_PROCESS:
            return None
        return self.name.removesuffix("_total") + "_created"

    def series_names(self) -> list[str]:
        """The sample names Prometheus stores for this family."""
        if self.type == "histogram":
            base = self.name
            return [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
        return [self.name, *([self.created] if self.created else [])]


def metric_catalogue() -> list[MetricInfo]:
    """Every metric Conveyor exports, read from the metric classes themselves."""
    found: list[MetricInfo] = []
    for component, cls in (("worker", WorkerMetrics), ("api", ApiMetrics), ("beat", BeatMetrics)):
        registry = CollectorRegistry()
        metrics = cls(registry)
        for metric in _declared(metrics):
            kind = metric._type
            name = metric._name + ("_total" if kind == "counter" else "")
            seen = next((i for i, m in enumerate(found) if m.name == name), None)
            if seen is not None:  # declared by more than one component (workflows' ends)
                found[seen] = replace(
                    found[seen], component=f"{found[seen].component}, {component}"
                )
                continue
            found.append(MetricInfo(name, kind, tuple(metric._labelnames),
                                    metric._documentation, component))  # fmt: skip
    found += [MetricInfo(m.name, "gauge", m.labels, m.help, "exporter") for m in EXPORTER_METRICS]
    return found


def _declared(metrics: object) -> list[Any]:
    """The metrics a metrics class declares, those of classes it holds (WorkflowMetrics) too
    (not the children it keeps at hand, such as `ApiMetrics.submitted`).
    """
    found = []
    for value in vars(metrics).values():
        if isinstance(value, WorkflowMetrics):
            found += _declared(value)
        elif isinstance(value, MetricWrapperBase):
            found.append(value)
    return found


def catalogue_markdown() -> str:
    """The catalogue as a Markdown table (a single-process counter's `_created` series too)."""
    rows = ["| metric | type | labels | from | meaning |", "| --- | --- | --- | --- | --- |"]
    for m in metric_catalogue():
        labels = ", ".join(m.labels) or "-"
        rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.component} | {m.help} |")
        if m.created:
            rows.append(
                f"| `{m.created}` | gauge | {labels} | {m.component} | When each series of "
                f"`{m.name}` was created (Unix time; prometheus-client adds it to the counters "
                "of a single-process service). Not used by the rules or dashboards. |"
            )
    return "\n".join(rows)

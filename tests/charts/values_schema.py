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
FREE_FORM = {
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
    "api.ingress.annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "monitoring.labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "networkPolicy.apiFrom": {"type": "array", "items": {"type": "object"}},
    "networkPolicy.metricsFrom": {"type": "array", "items": {"type": "object"}},
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "tolerations": {"type": "array", "items": {"type": "object"}},
}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}},
}
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "environment": {"enum": ["production", "development"]},
    "image.pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "image.digest": {"pattern": "^(sha256:[a-f0-9]{64})?$"},
    "config.logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
    "config.logFormat": {"enum": ["json", "text"]},
    "config.redisDurabilityCheck": {"enum": ["warn", "refuse", "off"]},
    "config.smtp.security": {"enum": ["none", "starttls", "tls"]},
    "config.visibilityTimeoutSeconds": {"minimum": 2},
    "config.retentionSeconds": {"minimum": 60},
    "api.service.type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "api.workers": {"minimum": 1},
    "keda.trigger": {"enum": ["redis", "prometheus"]},
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
    "autoscaling.listLength": {"minimum": 1},
    "autoscaling.cooldownPeriod": {"minimum": 0},
    "autoscaling.scaleDownStabilizationSeconds": {"minimum": 0, "maximum": 3600},
}


def _node(value: Any, path: str) -> dict[str, Any]:
    if path in FREE_FORM:
        return dict(FREE_FORM[path])
    if path.endswith("resources"):
        return dict(RESOURCES)
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

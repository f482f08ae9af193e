"""Validating custom resources against the upstream CRD schemas (copied in crds/)."""

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"


def _translate(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to JSON Schema, strict like `kubectl --validate=strict`."""
    if isinstance(node, list):
        return [_translate(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _translate(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    pattern = node.get("pattern")
    if isinstance(pattern, str) and pattern.startswith("^(?i)"):
        node["pattern"] = "(?i)^" + pattern[len("^(?i)") :]  # Go allows inline flags anywhere
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    if node.get("type") == "object" and "properties" in node and not preserve:
        node.setdefault("additionalProperties", False)
    return node


@cache
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON Schema of the resource."""
    found = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _translate(version["schema"]["openAPIV3Schema"])
            # metadata is validated by the API server, not the CRD schema.
            schema["properties"]["metadata"] = {"type": "object"}
            found[(f"{group}/{version['name']}", kind)] = schema
    return found


def validate(resource: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if `resource` does not fit its CRD."""
    schema = schemas()[(resource["apiVersion"], resource["kind"])]
    jsonschema.validate(resource, schema)

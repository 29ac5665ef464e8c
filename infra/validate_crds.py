"""Validate the custom resources of rendered manifests against their CRDs' own schemas, offline and strictly.

kubernetes-validate knows the built-in kinds only: Gateway API routes, Prometheus Operator objects and KServe
resources would pass unchecked. Their schemas are vendored in infra/schemas/ (each file names its upstream CRD,
release tag and commit): the `openAPIV3Schema` the API server validates with. Strict as `kubectl apply`'s default
server-side field validation: an unknown field is an error (the schema's own `x-kubernetes-preserve-unknown-fields`
objects excepted). Not evaluated: CEL rules (`x-kubernetes-validations`) and string formats.

A custom resource whose kind has no vendored schema is an error, never a skip. Built-in kinds are left to
kubernetes-validate.

usage: .venv-deploy/bin/python infra/validate_crds.py RENDERED.yaml...
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
from functools import cache
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
# API groups of built-in kinds (kubernetes-validate checks those)
BUILT_IN_GROUPS = {"", "v1", "apps", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
                   "batch", "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io"}


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the known ones (the API server's strict mode)."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") \
                    and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@cache
def schemas() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    found = {}
    for path in sorted(SCHEMAS.glob("*.json.gz")):
        doc = json.loads(gzip.decompress(path.read_bytes()))
        schema = strict(doc["schema"])
        # metadata is `type: object` in every CRD: the API server checks it as ObjectMeta; name and namespace here
        schema.setdefault("required", [])
        found[(doc["apiVersion"], doc["kind"])] = jsonschema.Draft7Validator(schema)
    return found


def errors_of(document: dict) -> list[str]:
    api_version, kind = document.get("apiVersion", ""), document.get("kind", "")
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    if group in BUILT_IN_GROUPS:
        return []
    validator = schemas().get((api_version, kind))
    name = f"{kind} {document.get('metadata', {}).get('name')}"
    if validator is None:
        return [f"{name}: no schema for {api_version} {kind} in {SCHEMAS} (vendor its CRD)"]
    return [f"{name}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def main(paths: list[str]) -> int:
    failed = checked = 0
    for path in paths:
        for document in yaml.safe_load_all(Path(path).read_text()):
            if not document:
                continue
            errors = errors_of(document)
            group = document.get("apiVersion", "").rsplit("/", 1)[0] if "/" in document.get("apiVersion", "") else ""
            checked += group not in BUILT_IN_GROUPS
            for error in errors:
                print(f"{path}: {error}")
            failed += bool(errors)
    print(f"custom resources: {checked} checked against their CRD schemas, {failed} invalid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

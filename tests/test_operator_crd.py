"""The RaftCluster CRD (charts/tinyraft-operator/crds/raftcluster.yaml): a valid Kubernetes object whose
OpenAPI schema (checked with jsonschema) and CEL rules (evaluated with cel-python, as
the API server would, with `oldSelf` on updates) accept good specs and reject bad ones
with clear messages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

CRD = yaml.safe_load(
    (
        Path(__file__).resolve().parent.parent / "charts/tinyraft-operator/crds/raftcluster.yaml"
    ).read_text()
)
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
_CEL = celpy.Environment()


def _defaults(schema: dict[str, Any], value: Any) -> Any:
    """Apply the schema's defaults, as the API server does before validating."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _defaults(sub, value[key])
    return value


def cel_errors(schema: dict[str, Any], new: Any, old: Any = None, where: str = "") -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"] and old is None:
            continue  # transition rules apply to updates only
        activation = {"self": celpy.json_to_cel(new)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        if not _CEL.program(_CEL.compile(rule["rule"])).evaluate(activation):
            errors.append(f"{where or '<root>'}: {rule['message']}")
    if isinstance(new, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in new:
                sub_old = old.get(key) if isinstance(old, dict) else None
                errors += cel_errors(sub, new[key], sub_old, f"{where}.{key}")
    if isinstance(new, list) and "items" in schema:
        for i, item in enumerate(new):
            errors += cel_errors(schema["items"], item, None, f"{where}[{i}]")
    return errors


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server would say: [] when accepted, else the messages."""
    obj = _defaults(SCHEMA, copy.deepcopy(obj))
    if old is not None:
        old = _defaults(SCHEMA, copy.deepcopy(old))
    messages = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(obj)
    ]
    return messages or cel_errors(SCHEMA, obj, old)


def rc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replicas": 3,
        "module": {"port": 7100},
        "template": {"spec": {"containers": [{"name": "app", "image": "example.org/kv:1"}]}},
    }
    base.update(spec)
    return {
        "apiVersion": "tinyraft.dev/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {"name": "kv"},
        "spec": base,
    }


def test_the_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(CRD, "1.30", strict=True)
    assert CRD["spec"]["names"]["shortNames"] == ["rc"]
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns == {
        "Replicas": ".spec.replicas",
        "Ready": ".status.readyReplicas",
        "Leader": ".status.leader",
        "Term": ".status.term",
        "Phase": ".status.phase",
        "Age": ".metadata.creationTimestamp",
    }


def test_every_rule_compiles() -> None:
    def walk(schema: dict[str, Any]) -> None:
        for rule in schema.get("x-kubernetes-validations") or []:
            _CEL.compile(rule["rule"])
            assert rule["message"]
        for sub in (schema.get("properties") or {}).values():
            walk(sub)
        if "items" in schema:
            walk(schema["items"])

    walk(SCHEMA)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"replicas": 1},
        {"replicas": 4},  # even counts are allowed (the operator warns in an Event)
        {"replicas": 5, "podDisruptionBudget": {"maxUnavailable": 2}},
        {"replicas": 1, "podDisruptionBudget": {"maxUnavailable": 1}},
        {"tls": {"secretName": "kv-tls"}, "paused": True},
        {"sidecar": {"image": "x/y:1", "timing": {"heartbeatMs": 50, "electionMs": 150}}},
        {"storage": {"size": "20Gi", "storageClassName": "fast"}},
    ],
)
def test_good_specs_are_accepted(spec: dict[str, Any]) -> None:
    assert admit(rc(**spec)) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"replicas": 0}, "less than the minimum of 1"),
        ({"replicas": 11}, "greater than the maximum of 9"),
        ({"module": {"port": 7000}}, "module.port must differ"),
        ({"template": {"spec": {"containers": [{"name": "tinyraft"}]}}}, "reserved"),
        ({"template": {"spec": {"containers": []}}}, "should be non-empty"),
        ({"replicas": 3, "podDisruptionBudget": {"maxUnavailable": 2}}, "would lose quorum"),
        ({"sidecar": {"timing": {"heartbeatMs": 100, "electionMs": 200}}}, "at least 3 times"),
        ({"storage": {"size": "lots"}}, "does not match"),
        ({"tls": {}}, "'secretName' is a required property"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(spec: dict[str, Any], expected: str) -> None:
    messages = admit(rc(**spec))
    assert any(expected in m for m in messages), messages


def test_storage_cannot_change_after_creation() -> None:
    old = rc(storage={"size": "1Gi"})
    assert admit(rc(storage={"size": "1Gi"}, replicas=5), old) == []
    messages = admit(rc(storage={"size": "5Gi"}), old)
    assert any("storage is immutable" in m for m in messages), messages
    messages = admit(rc(storage={"size": "1Gi", "storageClassName": "other"}), old)
    assert any("storage is immutable" in m for m in messages), messages
    # Dropping the field re-applies the default, which differs: refused as well.
    assert admit(rc(), rc(storage={"size": "3Gi"}))


def test_tls_cannot_be_turned_on_or_off() -> None:
    plain, tls = rc(), rc(tls={"secretName": "kv-tls"})
    assert any("tls cannot be turned on or off" in m for m in admit(tls, plain))
    assert any("tls cannot be turned on or off" in m for m in admit(plain, tls))
    assert admit(rc(tls={"secretName": "rotated"}), tls) == []


def test_the_latched_cluster_id_never_changes() -> None:
    old = rc()
    old["status"] = {"clusterID": "abc"}
    new = copy.deepcopy(old)
    assert admit(new, old) == []
    new["status"] = {"clusterID": "def"}
    assert any("latched" in m for m in admit(new, old))
    new["status"] = {}
    assert any("latched" in m for m in admit(new, old))

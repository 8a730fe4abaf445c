"""Schema checks for exported objects: Kubernetes' own kinds and the KServe / KEDA CRDs.

`validate(obj)` refuses (raises `SchemaError`, naming the object and the failing path) an
object that the pinned schemas do not accept, in strict mode: an unknown field fails.

- Core kinds (Deployment, Service, HorizontalPodAutoscaler, PersistentVolumeClaim, ...):
  `kubernetes-validate`'s OpenAPI schemas of Kubernetes `KUBERNETES_VERSION`, strict (its
  `-strict` schemas have `additionalProperties: false` on every object).
- Custom resources (`serving.kserve.io/v1beta1` InferenceService, `keda.sh/v1alpha1`
  ScaledObject): the CRDs' `openAPIV3Schema`s shipped in tests/data/export/crds/ (their
  sources in SOURCE.md), made strict here: `additionalProperties: false` is put on every
  object schema that lists `properties` and has neither `additionalProperties` nor
  `x-kubernetes-preserve-unknown-fields` (what the API server's structural pruning would
  drop silently, which for an export is a silent loss). A CRD's `metadata` schema is only
  `type: object`, so the metadata is checked as a ConfigMap's (ObjectMeta, strict).
"""

from __future__ import annotations

import copy
import gzip
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

KUBERNETES_VERSION = "1.33.0"
CRD_DIR = Path(__file__).parent / "data" / "export" / "crds"
# (apiVersion, kind) -> (file, served version)
CRDS: dict[tuple[str, str], tuple[str, str]] = {
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "serving.kserve.io_inferenceservices.yaml.gz",
        "v1beta1",
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): ("keda.sh_scaledobjects.yaml", "v1alpha1"),
}


class SchemaError(AssertionError):
    pass


def validate(obj: Mapping[str, Any]) -> None:
    """Raise SchemaError unless the pinned schema of `obj`'s kind accepts it, strictly."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key in CRDS:
        _validate_custom(obj, key)
    else:
        _validate_core(dict(obj))


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name') if isinstance(meta, Mapping) else '?'}"


def _validate_core(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        raise SchemaError(f"{_name(obj)}: {where}: {e.message}") from None


def _validate_custom(obj: Mapping[str, Any], key: tuple[str, str]) -> None:
    errors = sorted(
        _validator(key).iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]
    )
    if errors:
        lines = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors]
        raise SchemaError(f"{_name(obj)}: " + "; ".join(lines))
    meta = obj.get("metadata")
    _validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})


@cache
def _validator(key: tuple[str, str]) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict_schema(crd_schema(*CRDS[key])))


@cache
def crd_schema(file: str, version: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema for `version`, as shipped (not yet strict)."""
    path = CRD_DIR / file
    raw = gzip.decompress(path.read_bytes()) if file.endswith(".gz") else path.read_bytes()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(raw, Loader=loader)  # noqa: S506 (a safe loader)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with `additionalProperties: false` on each object schema that
    names its properties and says nothing of others (see the module docstring)."""
    out = copy.deepcopy(schema)
    _tighten(out)
    return out


def _tighten(node: Any) -> None:
    """Walk a schema by its structure (never a `properties` map as if it were a schema)."""
    if not isinstance(node, dict):
        return
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for sub in (node.get("properties") or {}).values():
        _tighten(sub)
    for key in ("items", "additionalProperties", "not"):
        _tighten(node.get(key))
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in node.get(key) or ():
            _tighten(sub)

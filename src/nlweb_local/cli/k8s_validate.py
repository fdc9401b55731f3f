"""Offline validation of generated manifests (`nlweb-local deploy k8s --validate`, and the tests).

Kubernetes' own kinds are checked by `kubernetes-validate` (pip install 'nlweb-local[k8s]'), which ships the
JSON schemas of every Kubernetes release, in strict mode (an unknown field is an error). KEDA's ScaledObject
is a custom resource, absent from those schemas: it is checked against `keda_scaledobject.schema.json`
beside this module, a minimal strict schema of the ScaledObject fields (KEDA's documented CRD fields).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import BadRequestError

KUBERNETES_VERSION = "1.30"  # autoscaling/v2 HPA is GA since 1.23; 1.30 is a version clusters still run
KEDA_SCHEMA = Path(__file__).with_name("keda_scaledobject.schema.json")


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        raise BadRequestError("validating needs kubernetes-validate: pip install 'nlweb-local[k8s]'") from None
    return kubernetes_validate


def validate_document(doc: dict[str, Any], version: str = KUBERNETES_VERSION) -> None:
    """Raise `BadRequestError` naming the document and the field when `doc` is not valid."""
    import jsonschema

    what = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
    if doc.get("apiVersion", "").startswith("keda.sh/"):
        schema = json.loads(KEDA_SCHEMA.read_text())
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            raise BadRequestError(f"{what}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        return
    kv = _kubernetes_validate()
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        raise BadRequestError(f"{what}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message} "
                              f"(Kubernetes {e.version}, strict)") from None
    except kv.SchemaNotFoundError as e:
        raise BadRequestError(f"{what}: {e.message}") from None


def validate_all(docs: Iterable[dict[str, Any]], version: str = KUBERNETES_VERSION) -> int:
    """Validate every document; the number validated."""
    n = 0
    for doc in docs:
        validate_document(doc, version)
        n += 1
    return n

"""Turn a model's answer into the JSON object that was asked for, or say why not.

Small models wrap JSON in code fences, add trailing text, stop mid-string at the token limit,
write scores as "82" or "82/100" and booleans as "True". This repairs what is repairable and
coerces values to the schema's declared types; anything else is a `ValueError` with the reason.
"""
from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def _balanced_object(text: str) -> str | None:
    """The first {...} span, closing strings and braces left open by a truncated answer."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    tail = text[start:].rstrip()
    if esc:
        tail = tail[:-1]
    if in_str:
        tail += '"'
    tail = re.sub(r",\s*$", "", tail)
    if re.search(r'"\s*:\s*$', tail):  # a key with no value
        tail += "null"
    return tail + "}" * max(depth, 1)


def extract_object(text: str) -> dict[str, Any]:
    m = _FENCE.search(text)
    candidates = [m.group(1)] if m else []
    candidates.append(text)
    for cand in candidates:
        cand = cand.strip()
        try:
            val = json.loads(cand)
            if isinstance(val, dict):
                return val
        except json.JSONDecodeError:
            pass
        span = _balanced_object(cand)
        if span:
            for attempt in (span, re.sub(r",\s*}", "}", span)):
                try:
                    val = json.loads(attempt)
                    if isinstance(val, dict):
                        return val
                except json.JSONDecodeError:
                    continue
    raise ValueError(f"no JSON object in model output: {text[:120]!r}")


def _coerce(value: Any, spec: dict[str, Any]) -> Any:
    typ = spec.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), None)
    if typ == "integer" or typ == "number":
        if isinstance(value, bool):
            raise ValueError("boolean where a number was expected")
        if isinstance(value, (int, float)):
            num = float(value)
        elif isinstance(value, str) and (m := _NUM.search(value)):
            num = float(m.group())
        else:
            raise ValueError(f"not a number: {value!r}")
        if "minimum" in spec:
            num = max(num, spec["minimum"])
        if "maximum" in spec:
            num = min(num, spec["maximum"])
        return int(round(num)) if typ == "integer" else num
    if typ == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "yes", "1"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", "no", "0"}:
            return False
        if isinstance(value, (int, float)):
            return bool(value)
        raise ValueError(f"not a boolean: {value!r}")
    if typ == "string":
        if value is None:
            raise ValueError("null where a string was expected")
        return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if typ == "array":
        items = spec.get("items", {})
        seq = value if isinstance(value, list) else [value]
        return [_coerce(v, items) for v in seq] if items else seq
    return value


def coerce_to_schema(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse `text` and coerce it to an object `schema` (properties + required). Raises ValueError."""
    obj = extract_object(text)
    props: dict[str, Any] = schema.get("properties", {})
    out: dict[str, Any] = {}
    for key, spec in props.items():
        if key in obj and obj[key] is not None:
            try:
                out[key] = _coerce(obj[key], spec)
            except ValueError as e:
                if key in schema.get("required", []):
                    raise ValueError(f"field {key!r}: {e}") from e
    missing = [k for k in schema.get("required", []) if k not in out]
    if missing:
        raise ValueError(f"missing required field(s) {missing} in {text[:120]!r}")
    return out

"""CSV with a header row: one row is one schema.org item.

The header must have a ``url`` column (any case); the delimiter is the first of ``,`` ``;`` tab
that the header line contains. A ``@type`` or ``type`` column gives each row's
type; rows without one get `default_type` (``Thing`` unless the caller says otherwise). Every other
non-empty cell becomes a field of the item under its column name; a cell that starts with ``[`` or
``{`` and parses as JSON is stored parsed (so ``recipeIngredient`` can be a list).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from ..core.errors import SourceError
from .records import Parsed, Problem, Record, usable_url


def _cell(value: str) -> Any:
    v = value.strip()
    if v[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
    return v


def parse_csv(text: str, origin: str, *, default_type: str = "Thing") -> Parsed:
    first_line = text.split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first_line), ",")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise SourceError(f"{origin} is empty: a CSV source needs a header row with a url column")
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    if "url" not in lowered:
        raise SourceError(f"{origin} has no url column (header: {', '.join(names)[:200]}); add a column named url")
    url_col = lowered.index("url")
    type_col = next((i for i, n in enumerate(lowered) if n in ("@type", "type")), None)
    out = Parsed()
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            out.problems.append(Problem(f"{origin}:{reader.line_num}", f"unreadable CSV row: {e}"))
            continue
        where = f"{origin}:{reader.line_num}"
        if not any(c.strip() for c in row):
            continue
        if len(row) > len(names):
            out.problems.append(Problem(where, f"{len(row)} values but the header has {len(names)} columns"))
            continue
        url = usable_url(row[url_col] if url_col < len(row) else "")
        if url is None:
            out.problems.append(Problem(where, "empty or unusable url"))
            continue
        typ = row[type_col].strip() if type_col is not None and type_col < len(row) else ""
        obj: dict[str, Any] = {"@type": typ or default_type}
        for i, value in enumerate(row):
            if i == type_col or not value.strip() or not names[i]:
                continue
            obj["url" if i == url_col else names[i]] = url if i == url_col else _cell(value)
        out.records.append(Record(url, [obj], where))
    return out

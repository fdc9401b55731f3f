"""`POST /feedback`: a user's rating of one answer — the quality evidence of A/B experiments.

    {"request_id": "...", "query_id": "...", "rating": 1, "comment": "..."}   → 201 {"recorded": true, ...}

`request_id` is the answer's `x-request-id` (every response carries it; the chat page sends the one of
its /ask stream), `query_id` the /ask answer's `query_id`; at least one is needed. `rating`: +1 / -1 (or
"up" / "down") is a thumbs rating; 2–5 are stars, and 1 star is `{"rating": 1, "scale": "stars"}`
(without the scale, 1 is a thumbs up). Stored in the registry database's `feedback` table, normalised to
[0, 1] (thumbs up 1, down 0, stars (r − 1) / 4).

Which version served the rated answer: looked up when the rating comes, by request id, in the telemetry's
in-memory ring of recent calls (bounded: `telemetry.stats_window_calls`; the newest successful call of
that request); stored with the rating. When it is not there (telemetry off, a rating of an old answer,
only a query id), `ab report` finds it later in the ledger by request id.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.errors import BadRequestError, NlwebError
from ..registry.experiment_store import ExperimentStore, Feedback
from .body import parse_json, read_request_body
from .errors import openai_error

MAX_BODY = 8192
MAX_COMMENT = 2000
RECENT_S = 3600.0  # how far back the ring is searched for the request's version
_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")
_THUMBS = {"up": 1.0, "down": -1.0, "+1": 1.0, "-1": -1.0}


def parse_feedback(body: Any) -> tuple[str, str, float, float, str]:
    """(request id, query id, rating, score in [0, 1], comment) of a /feedback body; `BadRequestError`
    saying what to fix."""
    usage = ('send {"request_id": ID (the answer\'s x-request-id) or "query_id": ID, "rating": +1 or -1 '
             '(or 2-5 stars; 1 star with "scale": "stars"), "comment": TEXT (optional)}')
    if not isinstance(body, dict):
        raise BadRequestError(usage)
    ids = []
    for field in ("request_id", "query_id"):
        value = body.get(field) or ""
        if value and (not isinstance(value, str) or not _ID.match(value)):
            raise BadRequestError(f"{field} must be the id as the server gave it (1-200 letters, digits, . _ : / -)")
        ids.append(value)
    if not any(ids):
        raise BadRequestError(usage)
    rating, scale = body.get("rating"), body.get("scale")
    if isinstance(rating, str):
        rating = _THUMBS.get(rating.strip().lower(), rating)
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or rating != int(rating):
        raise BadRequestError(f"rating must be +1 or -1 (thumbs) or a whole number of stars 1-5, got {rating!r}")
    if scale not in (None, "thumbs", "stars"):
        raise BadRequestError(f'scale must be "thumbs" or "stars", got {scale!r}')
    r = float(rating)
    if scale == "stars" or (scale is None and r >= 2):
        if not 1 <= r <= 5:
            raise BadRequestError(f"a star rating is 1-5, got {rating!r}")
        score = (r - 1) / 4
    else:
        if r not in (1.0, -1.0):
            raise BadRequestError(f"a thumbs rating is +1 or -1, got {rating!r} (stars: 2-5, or \"scale\": \"stars\")")
        score = 1.0 if r > 0 else 0.0
    comment = body.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise BadRequestError(f"comment must be text of at most {MAX_COMMENT} characters")
    return ids[0], ids[1], r, score, comment


def served_version(rows: list[Any], request_id: str) -> str:
    """The NAME@VERSION of the newest successful call of `request_id` among ledger rows ("" if none). The
    id matches as given or as the server's part of a namespaced id (`<caller's>/<server's>`)."""
    if not request_id:
        return ""
    for r in reversed(rows):
        if r.ok and (r.request_id == request_id or r.request_id.endswith("/" + request_id)) and r.model_version:
            return r.model_version
    return ""


def feedback_routes(registry: Any, telemetry: Any = None, *, clock=time.time) -> list[Route]:
    store = ExperimentStore(registry.store)
    view = getattr(registry, "view", None)
    counter = _counter(telemetry)

    async def rate(request: Request) -> Response:
        try:
            body = parse_json(await read_request_body(request, MAX_BODY, 10.0) or b"{}")
            request_id, query_id, rating, score, comment = parse_feedback(body)
            rows = telemetry.window.snapshot(RECENT_S)[0] if telemetry is not None and request_id else []
            version = await asyncio.to_thread(served_version, rows, request_id) if rows else ""
            identity = (request.scope.get("state") or {}).get("identity")
            caller = getattr(identity, "key_id", "") or ""
            f = Feedback(clock(), request_id, query_id, rating, score, comment, caller, version)
            await asyncio.to_thread(store.add_feedback, f)
        except NlwebError as e:
            return openai_error(e)
        experiment = None
        if version and view is not None:
            experiment = next((e for e in view.experiments.values() if version in e.keys), None)
            if experiment is not None and counter is not None:
                counter.labels(experiment.alias, version, "positive" if score >= 0.75 else "negative").inc()
        return JSONResponse({"recorded": True, "model_version": version or None,
                             "experiment": experiment.id if experiment is not None else None}, status_code=201)

    return [Route("/feedback", rate, methods=["POST"])]


def _counter(telemetry: Any) -> Any:
    if telemetry is None:
        return None
    from prometheus_client import Counter

    return Counter("nlweb_ab_feedback", "ratings of answers served by a variant of a running A/B experiment",
                   ["alias", "variant", "rating"], registry=telemetry.metrics.registry)

"""Schemathesis over /openapi.json: every operation of the HTTP API, with an admin key, with a user key and
with none, fed requests generated from the document (valid and invalid parameters and bodies). Whatever is
sent, no answer is a 5xx and no body shows a stack trace. Bounded and reproducible (`derandomize`, a few
examples per operation and caller; about half a minute on two cores).

The app is the one `serve` composes with governance on (tests/governance_app.py). Breaker commands are reset
after each example (an opened breaker would make later /v1 calls an honest 503)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

schemathesis = pytest.importorskip("schemathesis")

from governance_app import governed_service  # noqa: E402
from nlweb_local.server.openapi import openapi_document  # noqa: E402

TRACEBACK = ("Traceback (most recent", 'File "/', ".py\", line ")
CALLERS = ("none", "user", "admin")


def _document() -> dict:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return openapi_document(governed_service(Path(d)).app.routes, version="fuzz")


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The governed app over scripted deployments, a scripted /ask LLM and a real store with a few items."""
    import json

    from governance_app import GovernedService, RecordingProvider
    from nlweb_local.core.types import Item
    from nlweb_local.providers.testing import FunctionLLM
    from nlweb_local.retrieval.qdrant_store import QdrantStore
    from nlweb_local.server.app import create_app
    from stand_ins import NoEmbedder, scripted_service, service_settings

    data = tmp_path_factory.mktemp("fuzz-openapi")
    s = service_settings(data, {"name": "cloud", "engine": "openai", "price_in_per_m": 1.0})
    s.server.autoload_demo = False
    s.server.body_timeout_s = 2.0
    s.llm.breaker.min_calls = 1000
    s.cache.enabled = False
    s.search.llm_rank_limit = 3
    embedder = NoEmbedder()
    store = QdrantStore(dimension=2, path=data / "q")
    items = [Item(f"https://e.example/{i}", name, site, json.dumps({"@type": "Recipe", "name": name}))
             for i, (name, site) in enumerate([("Apple pie", "e"), ("Pho", "f"), ("Tent", "g")])]
    store.upsert(items, embedder.embed([i.name for i in items]))
    llm = FunctionLLM(lambda task, prompt, schema: '{"score": 80, "description": "fits", "decontextualized_query": "q",'
                      ' "answer": "an answer", "summary": "a summary"}')
    local, cloud = RecordingProvider("local", "local answer"), RecordingProvider("cloud", "cloud answer", local=False)
    comp = scripted_service(s, {"local": local, "cloud": cloud}, llm=llm, embedder=embedder, store=store)
    svc = GovernedService(s, comp, create_app(s, comp, close_components=True), local, cloud)
    for role in ("user", "admin"):
        svc.key(role, role)
    with TestClient(svc.app, raise_server_exceptions=False, base_url="http://localhost") as c:
        yield svc, c
    store.close()


@pytest.mark.parametrize("caller", CALLERS)
@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, database=None, print_blob=False,
          suppress_health_check=list(HealthCheck))
def test_no_5xx_and_no_stack_trace(case, caller, service):
    svc, client = service
    kw = case.as_transport_kwargs(base_url="http://localhost")
    headers = {k: v for k, v in (kw.pop("headers", None) or {}).items()
               if k.lower() not in ("authorization", "x-api-key", "host")}
    if caller != "none":
        headers["authorization"] = f"Bearer {svc.keys[caller]}"
    kw.pop("timeout", None)
    r = client.request(kw.pop("method"), kw.pop("url"), headers=headers, **{k: v for k, v in kw.items()
                                                                          if k in ("params", "json", "content", "data")})
    try:
        assert r.status_code < 500, f"{case.method} {case.formatted_path} as {caller}: {r.status_code} {r.text[:500]}"
        assert not any(t in r.text for t in TRACEBACK), f"{case.method} {case.formatted_path}: a stack trace in {r.text[:500]}"
    finally:
        for b in svc.comp.router.breakers():
            svc.comp.router.reset(b.deployment)

"""local_only holds on every endpoint and every task kind, whoever asks for it (the request's header, the
key, the team, the site), with the local engine down: no call reaches a cloud deployment — neither a
vendor API nor a `vllm` engine at a public address (locality by address, not engine type)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from starlette.testclient import TestClient

from nlweb_local.core.errors import ProviderConnectionError
from nlweb_local.core.types import Item, Privacy, ScoredItem
from nlweb_local.governance.identity import Role
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import NoEmbedder, scripted_service, service_settings


class Recording(ScriptedProvider):
    """A scripted deployment that keeps every prompt it is sent (chat, classify and embed alike)."""

    def __init__(self, *a, embeddings: bool = False, **kw):
        super().__init__(*a, classify=True, **kw)
        if embeddings:
            self.capabilities = replace(self.capabilities, embeddings=True)
        self.prompts: list[str] = []
        self.privacies: list[Privacy] = []

    def _note(self, request):
        self.prompts.append(" ".join(m.content for m in request.messages))
        self.privacies.append(request.context.privacy)

    async def stream(self, request):
        self._note(request)
        async for ch in super().stream(request):
            yield ch

    async def classify(self, request, labels):
        self._note(request)
        return await super().classify(request, labels)

    async def embed(self, texts):
        self.prompts.extend(texts)
        if self.fail_with is not None:
            raise self.fail_with
        return await super().embed(texts)


ITEMS = [Item(f"https://{site}.example/{i}", f"{site} item {i}", site,
              json.dumps({"@type": "Thing", "name": f"{site} item {i}", "description": f"{site} words {i}"}))
         for site in ("public", "secret") for i in range(3)]


class TwoSites:
    """An in-memory store of two sites (no index version: no answer cache)."""

    def sites(self):
        from nlweb_local.retrieval.base import SiteInfo

        return [SiteInfo("public", 3), SiteInfo("secret", 3)]

    def count(self):
        return len(ITEMS)

    def search(self, vector, sites, limit):
        return [ScoredItem(it, 0.9 - 0.01 * n) for n, it in enumerate(ITEMS) if not sites or it.site in sites][:limit]


class Service:
    def __init__(self, tmp):
        s = service_settings(tmp, {"name": "cloud", "engine": "openai", "model": "gpt-4o-mini"},
                             {"name": "far", "engine": "vllm", "model": "m", "url": "http://93.184.216.34:8000/v1"},
                             {"name": "cloud-embed", "engine": "openai", "model": "text-embedding-3-small"})
        s.llm.breaker.min_calls = 10_000  # (the local engine's failures must not open its breaker)
        s.llm.rounds = 1
        s.cache.enabled = False
        s.search.llm_rank_limit = 6
        s.search.site_privacy = {"secret": "local_only"}
        s.auth.teams = {"vault": {"privacy": "local_only"}}
        self.local = Recording("local", "local words")
        self.cloud = Recording("cloud", "cloud words", local=False)
        self.far = Recording("far", "far words")  # a vllm adapter says local; its public address says cloud
        self.embed = Recording("cloud-embed", "x", local=False, embeddings=True)
        self.comp = scripted_service(s, {"local": self.local, "cloud": self.cloud, "far": self.far,
                                         "cloud-embed": self.embed}, store=TwoSites(), embedder=NoEmbedder(),
                                     telemetry=None, audit=None)
        keyring = self.comp.governance.keyring
        self.keys = {name: keyring.create(name, Role.USER, **kw)[1]
                     for name, kw in (("plain", {}), ("private", {"privacy": Privacy.LOCAL_ONLY}),
                                      ("teamed", {"team": "vault"}))}
        self.comp.governance.authenticator.keys_changed()
        self.client = TestClient(create_app(s, self.comp, close_components=False), base_url="http://localhost")

    def cloud_prompts(self) -> list[str]:
        return self.cloud.prompts + self.far.prompts + self.embed.prompts

    def reset(self, *, local_down: bool) -> None:
        for p in (self.local, self.cloud, self.far, self.embed):
            p.prompts.clear()
            p.privacies.clear()
        self.local.fail_with = ProviderConnectionError("local engine down", deployment="local") if local_down else None


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("privacy"))
    with svc.client:
        yield svc


def call(svc: Service, endpoint: str, source: str, *, site: str = "public", mode: str = "list", stream: bool = False,
         text: str = "what is there about the plan"):
    key = {"key": "private", "team": "teamed"}.get(source, "plain")
    headers = {"authorization": f"Bearer {svc.keys[key]}"}
    if source == "header":
        headers["x-nlweb-privacy"] = "local_only"
    if source == "site":
        site = "secret"
    c = svc.client
    if endpoint == "chat":
        return c.post("/v1/chat/completions", headers=headers,
                      json={"model": "auto", "stream": stream, "messages": [{"role": "user", "content": text}]})
    if endpoint == "completions":
        return c.post("/v1/completions", headers=headers, json={"model": "auto", "prompt": text, "stream": stream})
    if endpoint == "embeddings":
        return c.post("/v1/embeddings", headers=headers, json={"input": [text, "and more"]})
    if endpoint == "ask":
        return c.get("/ask", headers=headers, params={"query": "and what about it", "site": site, "generate_mode": mode,
                                                       "prev": text, "streaming": "false"})
    if endpoint == "mcp":
        return c.post("/mcp", headers={**headers, "accept": "application/json"},
                      json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "ask", "arguments": {"query": text, "site": site, "generate_mode": mode}}})
    assert endpoint == "chat_sse"
    message = {"type": "message", "content": {"query": "and what about it", "site": site, "mode": mode,
                                              "prev_queries": [text]}}
    return c.get("/chat/sse", headers=headers, params={"message": json.dumps(message)})


ENDPOINTS = ["chat", "completions", "embeddings", "ask", "mcp", "chat_sse"]
SITED = {"ask", "mcp", "chat_sse"}


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), source=st.sampled_from(["header", "key", "team", "site"]),
       mode=st.sampled_from(["list", "summarize", "generate"]), stream=st.booleans(),
       text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_local_only_never_reaches_a_cloud_deployment_with_the_local_engine_down(service, endpoint, source, mode,
                                                                                 stream, text):
    if source == "site" and endpoint not in SITED:
        source = "header"  # (a site's class applies where a site is searched)
    service.reset(local_down=True)
    r = call(service, endpoint, source, mode=mode, stream=stream, text=text)
    assert r.status_code < 500 or r.status_code == 503, r.text
    assert service.cloud_prompts() == [], (endpoint, source)
    assert all(p is Privacy.LOCAL_ONLY for p in service.local.privacies), (endpoint, source)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_without_local_only_the_same_requests_do_reach_the_cloud(service, endpoint):
    """The control: the scenario above can leak — the same requests, unprivileged, fall over to the cloud."""
    service.reset(local_down=True)
    r = call(service, endpoint, "none", mode="summarize")
    assert r.status_code == 200, r.text
    assert service.cloud_prompts(), endpoint


def test_a_local_only_site_keeps_its_items_local_in_a_question_to_every_site(service):
    """site=all with the local engine down: public items are ranked in the cloud, the secret site's are not
    (they keep their similarity score), and the summary that quotes a secret item stays local too."""
    service.reset(local_down=True)
    r = call(service, "ask", "none", site="all", mode="summarize")
    assert r.status_code == 200
    sent = " ".join(service.cloud_prompts())
    assert "public item" in sent
    assert "secret" not in sent
    service.reset(local_down=False)
    r = call(service, "ask", "none", site="all", mode="summarize")
    assert [p for p in service.local.prompts if "secret item" in p]  # the secret site's calls went local


def test_the_local_engine_serves_local_only_requests_when_it_is_up(service):
    service.reset(local_down=False)
    r = call(service, "chat", "key")
    assert r.status_code == 200 and r.headers["x-nlweb-route"].startswith("local")
    assert service.cloud_prompts() == []


def test_a_misspelt_privacy_header_is_refused_on_every_endpoint(service):
    for path, wire in (("/ask?query=x", "nlweb"), ("/v1/models", "openai")):
        r = service.client.get(path, headers={"authorization": f"Bearer {service.keys['plain']}",
                                              "x-nlweb-privacy": "local-only"})
        assert r.status_code == 400
        assert "x-nlweb-privacy must be 'local_only' or 'any'" in r.text, wire


def test_local_only_embeddings_are_made_in_process(service):
    service.reset(local_down=False)
    r = call(service, "embeddings", "header")
    assert r.status_code == 200 and "in-process" in r.headers["x-nlweb-route"]
    assert service.embed.prompts == []
    r = call(service, "embeddings", "none")
    assert r.status_code == 200 and r.headers["x-nlweb-route"].startswith("cloud-embed")


def test_key_privacy_is_stored_listed_and_given_by_the_cli(tmp_path, capsys):
    from nlweb_local.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    assert main(["--config", str(cfg), "keys", "create", "--name", "k", "--role", "user", "--privacy", "local_only"]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["privacy"] == "local_only"
    from nlweb_local.config.settings import load_settings
    from nlweb_local.governance import open_keyring

    keyring = open_keyring(load_settings(cfg, environ={}))
    try:
        (record,) = keyring.list()
        assert record.privacy is Privacy.LOCAL_ONLY and record.identity().privacy is Privacy.LOCAL_ONLY
        assert record.public()["privacy"] == "local_only"
    finally:
        keyring.close()


def test_a_key_store_made_before_privacy_gains_the_column(tmp_path):
    import sqlite3

    from nlweb_local.governance.key_store import SqliteKeyStore

    path = tmp_path / "keys.sqlite"
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, team TEXT NOT NULL,
        models TEXT NOT NULL, sites TEXT NOT NULL, limits TEXT NOT NULL, allow_from TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION)""")
    db.execute("INSERT INTO api_keys VALUES ('abc', 'old', 'user', '', '[]', '[]', '{}', '[]', 'h', 1.0, NULL, NULL)")
    db.commit()
    db.close()
    store = SqliteKeyStore(path)
    try:
        assert store.get("abc").privacy is Privacy.ANY
    finally:
        store.close()

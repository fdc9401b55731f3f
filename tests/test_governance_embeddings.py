"""/v1/embeddings made in process (the real MiniLM model: no embedding deployment) goes through governance
and the audit trail like a chat call: its tokens are reserved against the key's day budget before the
model runs (over it: 429 naming the limit, and the model is not run), and its audit row names the key, the
deployment that embedded and the tokens."""
from __future__ import annotations

import httpx

from nlweb_local.governance.identity import Limits, Role
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings


async def test_in_process_embeddings_are_held_to_the_keys_budget_and_audited(tmp_path, embedder):
    settings = service_settings(tmp_path)
    settings.cache.enabled = False
    comp = scripted_service(settings, {"local": ScriptedProvider("local", "hi")}, embedder=embedder, telemetry=None)
    try:
        keyring = comp.governance.keyring
        _, small = keyring.create("small", Role.USER, limits=Limits(tokens_per_day=40))
        _, plain = keyring.create("plain", Role.USER)
        comp.governance.authenticator.keys_changed()
        calls: list[int] = []
        provider = embedder.provider
        real = provider.embed

        async def counted(texts):
            calls.append(len(texts))
            return await real(texts)

        provider.embed = counted  # (the instance's own method: the model still runs; the count says whether it did)
        app = create_app(settings, comp, close_components=False)
        text = "a sentence of about twenty words to embed, so that two of them do not fit in forty tokens"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
            async def embed(key, texts):
                return await c.post("/v1/embeddings", json={"input": texts}, headers={"authorization": f"Bearer {key}"})

            r = await embed(small, [text])
            assert r.status_code == 200, r.text
            assert len(r.json()["data"][0]["embedding"]) == embedder.dimension
            assert calls == [1]
            r = await embed(small, [text, text])  # ~46 more tokens: past the 40 a day
            assert r.status_code == 429, r.text
            err = r.json()["error"]
            assert err["code"] == "tokens_per_day" and "40 tokens a day" in err["message"]
            assert int(r.headers["retry-after"]) > 0
            assert calls == [1]  # refused before the model ran
            r = await embed(plain, [text, text])  # another key: its own (unlimited) budget
            assert r.status_code == 200 and calls == [1, 2]
        comp.audit.flush()
        rows = [x for x in comp.audit.store.scan() if x.endpoint == "/v1/embeddings"]
        assert [x.status for x in rows] == [200, 429, 200]
        first = rows[0]
        assert first.key_id == keyring.list()[0].key_id and first.role == "user"
        assert first.deployment and first.tokens_in > 0  # what embedded it, and its tokens
        assert rows[2].tokens_in > first.tokens_in
    finally:
        embedder.provider.__dict__.pop("embed", None)
        await comp.close()

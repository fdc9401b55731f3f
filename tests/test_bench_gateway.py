"""benchmarks/bench_gateway.py: the harness pieces (wrk report parsing, figures, the kit check, the
composition of the gateway under test, the baseline plumbing) and one very short run when wrk and the
kit are present. Nothing here is timed: the figures are only checked for shape, not for speed."""
import json
import os
import shutil
import subprocess
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


def test_without_a_baseline_its_figures_are_null_and_no_row_is_printed(capsys):
    results = _results(0.46, 4500, litellm=False)
    f = bg.summarize(results, {}, 8.0)
    for key in ("baseline_c16_rps", "baseline_c1_added_ratio_vs_floor", "baseline_c16_rps_ratio_vs_floor",
                "rps_ratio_vs_baseline", "baseline_rev"):
        assert f[key] is None, key
    bg.print_table(results, f)
    out = capsys.readouterr().out
    assert "baseline" not in out and "\nnlweb-local " in out


def test_baseline_ratios_are_printed_next_to_this_checkouts(capsys):
    results = _results(0.46, 4500, litellm=False)
    results = {**results, "baseline": _runs(0.61, 4000, cpu_s=0.6)}  # as measure_all orders them: before litellm
    f = bg.summarize(results, {"baseline_rev": "b351c47", "baseline_commit": "b351c47520aa", "baseline_route": "x"}, 8.0)
    assert f["baseline_c1_p50_added_ms"] == pytest.approx(0.60) and f["baseline_c16_rps"] == 4000
    assert f["c1_added_ratio_vs_floor"] == 1.5 and f["baseline_c1_added_ratio_vs_floor"] == 2.0
    assert f["c16_rps_ratio_vs_floor"] == 0.75 and f["baseline_c16_rps_ratio_vs_floor"] == 0.67
    assert f["baseline_c64_rps_ratio_vs_floor"] == 0.67 and f["baseline_c16_cpu_ratio_vs_floor"] == 1.8  # 75 µs vs 41.7
    assert f["rps_ratio_vs_baseline"] == 1.12 and f["c1_added_ratio_vs_baseline"] == 0.75
    assert f["c16_cpu_ratio_vs_baseline"] == 0.74 and f["baseline_errors"] == 0 and f["baseline_rev"] == "b351c47"
    assert f["targets_met"]["c16_rps_ge_70pct_floor"] is True  # the targets stay this checkout's
    json.dumps(f)
    bg.print_table(results, f)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines if ln.startswith(("nlweb-local ", "baseline "))] == ["nlweb-local", "baseline"]
    assert any(ln.startswith("c=16 req/s vs floor:") and ln.endswith("baseline b351c47: 0.67") for ln in lines)
    assert any(ln.startswith("added p50 at c=1 vs floor:") and ln.endswith("baseline b351c47: 2.0x") for ln in lines)
    assert any(ln.startswith("vs baseline b351c47: c=16 req/s 1.12x") for ln in lines)


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
    with TestClient(bg.gateway_app(), base_url="http://localhost") as client:
        models = client.get("/v1/models").json()
    assert components.build_embedder is refuse and components.build_store is refuse
    assert bg.MODEL in [m["id"] for m in models["data"]]


def test_baseline_factory_for_either_layout(tmp_path):
    old, new, none = tmp_path / "old", tmp_path / "new", tmp_path / "none"
    (old / "src/nlweb_local/cli").mkdir(parents=True)
    (old / "src/nlweb_local/cli/bench_gateway.py").write_text("")
    (old / "benchmarks").mkdir()  # older revisions had the folder, without bench_gateway.py
    (new / "benchmarks").mkdir(parents=True)
    (new / "benchmarks/bench_gateway.py").write_text("")
    none.mkdir()
    assert bg.baseline_factory(old) == ("nlweb_local.cli.bench_gateway", ["--factory", "nlweb_local.cli.bench_gateway:gateway_app"])
    assert bg.baseline_factory(new) == ("bench_gateway", ["--factory", "--app-dir", str(new / "benchmarks"), "bench_gateway:gateway_app"])
    with pytest.raises(RuntimeError, match="no gateway benchmark"):
        bg.baseline_factory(none)
    assert bg.baseline_env(new) == {"PYTHONPATH": str(new / "src")}


def _fake_revision(root: Path, layout: str) -> None:
    """A revision whose package is nothing like this one: its settings say so, under its own variable name."""
    pkg = root / "src" / "nlweb_local"
    (pkg / "config").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config" / "__init__.py").write_text("")
    (pkg / "config" / "settings.py").write_text("def load_settings(path=None):\n    return {'file': path}\n")
    module = (f"import json\nSETTINGS_ENV = 'OLD_{layout.upper()}_SETTINGS'\n"
              "class _S:\n    def __init__(self, d): self.d = d\n    def model_dump_json(self): return json.dumps(self.d)\n"
              f"def gateway_settings(settings, mock_port, data_dir):\n"
              f"    return _S({{'layout': '{layout}', 'port': mock_port, 'data': str(data_dir), "
              "**(settings if isinstance(settings, dict) else {'file': type(settings).__module__})})\n")
    if layout == "old":
        (pkg / "cli").mkdir()
        (pkg / "cli" / "__init__.py").write_text("")
        (pkg / "cli" / "bench_gateway.py").write_text(module)
    else:
        (root / "benchmarks").mkdir()
        (root / "benchmarks" / "bench_gateway.py").write_text(
            "import sys\nfrom pathlib import Path\nsys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))\n" + module)


@pytest.mark.parametrize("layout", ["old", "new"])
def test_baseline_settings_are_built_by_the_baselines_own_code(tmp_path, layout):
    root = tmp_path / "rev"
    _fake_revision(root, layout)
    module, _ = bg.baseline_factory(root)
    env, text = bg.baseline_settings(root, module, str(tmp_path / "user.yaml"), 40000, tmp_path / "data")
    assert env == f"OLD_{layout.upper()}_SETTINGS"
    assert json.loads(text) == {"layout": layout, "port": 40000, "data": str(tmp_path / "data"),
                                "file": str(tmp_path / "user.yaml")}


def test_baseline_settings_refuse_a_baseline_whose_code_did_not_load(tmp_path):
    root = tmp_path / "rev"
    _fake_revision(root, "new")
    shutil.rmtree(root / "src")  # its bench_gateway.py would then run this checkout's package
    with pytest.raises(RuntimeError, match="not by the package under"):
        bg.baseline_settings(root, "bench_gateway", "", 40000, tmp_path / "data")


def test_this_checkout_as_its_own_baseline_gives_settings_this_schema_reads(tmp_path):
    env, text = bg.baseline_settings(ROOT, "bench_gateway", "", 40000, tmp_path / "data")
    s = Settings.model_validate_json(text)
    assert env == bg.SETTINGS_ENV and [d.url for d in s.llm.deployments] == ["http://127.0.0.1:40000/v1"]
    assert s.data_dir == str(tmp_path / "data") and s.llm.embedded_enabled is False


def test_baseline_config_shares_the_users_file_but_not_this_checkouts_defaults_file(tmp_path, monkeypatch):
    checkout, rev, elsewhere = tmp_path / "checkout", tmp_path / "rev", tmp_path / "elsewhere"
    for d in (checkout, rev, elsewhere):
        d.mkdir()
    (checkout / "nlweb-local.yaml").write_text("# this schema's defaults\n")
    user = elsewhere / "mine.yaml"
    user.write_text("log_level: INFO\n")
    monkeypatch.chdir(elsewhere)
    assert bg.baseline_config(str(user), rev, checkout, environ={}) == str(user)
    assert bg.baseline_config("mine.yaml", rev, checkout, environ={}) == str(user)  # made absolute: it runs elsewhere
    assert bg.baseline_config(None, rev, checkout, environ={"NLWEB_LOCAL_CONFIG": str(user)}) == str(user)
    assert bg.baseline_config(None, rev, checkout, environ={}) == ""  # no file at all
    monkeypatch.chdir(checkout)  # ./nlweb-local.yaml is this checkout's defaults file: the baseline reads its own
    assert bg.baseline_config(None, rev, checkout, environ={}) == ""
    (rev / "nlweb-local.yaml").write_text("# its defaults\n")
    assert bg.baseline_config(None, rev, checkout, environ={}) == str(rev / "nlweb-local.yaml")
    assert bg.baseline_config(str(checkout / "nlweb-local.yaml"), rev, checkout, environ={}) == str(rev / "nlweb-local.yaml")


def test_export_revision_gives_that_commits_files(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (repo / "f.txt").write_text("first")
    git("add", "f.txt")
    git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    (repo / "f.txt").write_text("second")
    (repo / "g.txt").write_text("new")
    git("commit", "-qam", "two")
    git("add", "g.txt")
    git("commit", "-qm", "three")
    assert bg.export_revision(repo, first[:7], tmp_path / "out") == first
    assert (tmp_path / "out" / "f.txt").read_text() == "first" and not (tmp_path / "out" / "g.txt").exists()
    assert (repo / "f.txt").read_text() == "second" and git("worktree", "list").count("\n") == 0  # repo untouched
    with pytest.raises(RuntimeError, match="not a commit"):
        bg.export_revision(repo, "no-such-rev", tmp_path / "out2")


def test_litellm_config_points_at_the_mock():
    cfg = json.loads(bg.litellm_config(40000, "sk-x"))
    (entry,) = cfg["model_list"]
    assert entry["model_name"] == bg.MODEL and entry["litellm_params"]["model"] == "openai/mock"
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:40000/v1" and cfg["general_settings"]["master_key"] == "sk-x"


@pytest.mark.skipif(shutil.which("wrk") is None or not KIT.is_dir(), reason="needs wrk and ../shared/bench/gateway")
def test_one_very_short_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written in the working folder
    in_git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode == 0
    args = bg.build_parser().parse_args(["--kit", str(KIT), "--duration", "1", "--soak", "1", "--no-litellm",
                                         *(["--baseline", "HEAD"] if in_git else [])])
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
    if in_git:  # the last commit's gateway, exported and measured alongside, then removed with the temp folder
        assert f["baseline_rev"] == "HEAD" and f["baseline_c16_rps"] is not None and f["rps_ratio_vs_baseline"] is not None
        assert f["baseline_errors"] == 0 and f["baseline_route"].startswith(bg.MODEL)
    assert list(tmp_path.iterdir()) == []


def test_governed_settings_turn_auth_and_audit_on_and_make_a_key(tmp_path):
    s, key = bg.governed_settings(bg.gateway_settings(Settings(), 40000, tmp_path), tmp_path)
    assert s.auth.enabled and s.audit.enabled and key.startswith("nlk_")
    assert s.auth.teams["bench"].tokens_per_day and Settings.model_validate_json(s.model_dump_json()) == s


async def test_unstored_gateway_makes_rows_but_keeps_none(tmp_path, monkeypatch):
    """--unstored's gateway: governance on, and its audit store takes every batch while keeping nothing (the
    diagnostic must not measure a gateway whose writer fails and retries instead)."""
    import nlweb_local.server.app as app_module
    from nlweb_local.governance.audit_chain import entry

    s, _ = bg.governed_settings(bg.gateway_settings(Settings(), 40000, tmp_path), tmp_path)
    cfg = tmp_path / "s.json"
    cfg.write_text(s.model_dump_json())
    seen = []
    monkeypatch.setattr(app_module, "create_app", lambda settings, comp, **kw: seen.append(comp) or comp)
    for mode in ("on", "unstored"):
        monkeypatch.setenv(bg.SETTINGS_ENV, str(cfg))
        monkeypatch.setenv(bg.GOVERNANCE_ENV, mode)
        comp = bg.gateway_app()
        try:
            assert comp.governance is not None and comp.audit is not None
            before = comp.audit.store.head()
            assert comp.audit.store.append([entry(ts=1.0, kind="request", endpoint="/v1/chat/completions")]) == 1
            after = comp.audit.store.head()
            assert (after == before) == (mode == "unstored")  # on: one more row; unstored: none
        finally:
            await comp.close()
            comp.audit.close()  # (idempotent)


@pytest.mark.slow
def test_one_very_short_governance_run(tmp_path, capsys, monkeypatch):
    """--governance: governance off and on in one run (on: a key on every request, 401 without), both at c=16;
    with --control, a second governance-off gateway's ratio to the first (A/A) beside them; with --unstored, a
    governed gateway whose audit store keeps nothing, and its ratio to on."""
    if shutil.which("wrk") is None or not (KIT / "post.lua").exists():
        pytest.skip("needs wrk and the gateway kit")
    monkeypatch.chdir(tmp_path)
    args = bg.build_parser().parse_args(["--kit", str(KIT), "--governance", "--duration", "1", "--rounds", "2",
                                         "--control", "--unstored"])
    assert bg.run(args, Settings()) == 0
    out = capsys.readouterr().out
    f = json.loads(out.strip().splitlines()[-1])
    assert f["c16_rps_governance_off"] > 0 and f["c16_rps_governance_on"] > 0
    assert len(f["round_ratios"]) == 2 and min(f["round_ratios"]) <= f["c16_rps_ratio_governance"] <= max(f["round_ratios"])
    assert "the rounds' ratios:" in out
    assert f["c16_rps_ratio_governance"] is not None and f["errors"] == {"off": 0, "on": 0}
    assert "governance on" in out and "on / off" in out
    assert len(f["control_round_ratios"]) == 2 and f["control_ratio"] > 0 and "control (A/A)" in out
    assert len(f["unstored_round_ratios"]) == 2 and f["unstored_over_on"] > 0 and "unstored (governance on" in out
    assert set(f["rounds"]) == {"off", "on"}  # (the control and unstored are reported apart, never folded in)
    assert list(tmp_path.iterdir()) == []


def test_governance_instructions_reads_callgrind_s_per_thread_totals(tmp_path, monkeypatch, capsys):
    """`governance_instructions.py` takes each thread's total from callgrind's `--separate-threads` files
    (thread 1: the event loop), refuses a run that wrote none, and says what to install without valgrind."""
    import governance_instructions as gi

    out = tmp_path / "cg.on.160.out"
    for n, total in ((1, 4_000_000), (2, 16_000), (3, 42_000)):
        (tmp_path / f"cg.on.160.out-{n:02d}").write_text(f"version: 1\nsummary: {total}\ntotals: {total}\n")
    assert gi._threads(out) == {1: 4_000_000, 2: 16_000, 3: 42_000}
    with pytest.raises(RuntimeError, match="no per-thread totals"):
        gi._threads(tmp_path / "cg.off.160.out")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert gi.main(["--kit", str(tmp_path)]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err

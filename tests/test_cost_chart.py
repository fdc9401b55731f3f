"""`nlweb-local cost report --chart FILE.png`: the daily figures from known ledger rows, the chart's data
taken from the report's numbers, and a real PNG."""
import json
import struct
import sys
from datetime import datetime

import pytest

from nlweb_local.cli import cost
from nlweb_local.config.settings import load_settings
from nlweb_local.core.errors import BadRequestError
from nlweb_local.telemetry.ledger import CallRecord, CostLedger
from nlweb_local.telemetry.report import daily


def ts(day: str, hour: int = 12) -> float:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00").timestamp()


def row(when: float, *, local: bool, cost: float, ref: float, error: str = "", rid: str = "r") -> CallRecord:
    return CallRecord(when, rid, "local" if local else "cloud", local, "chat", 100, 20, 0.5, 0.1, cost, ref, ref - cost,
                      error)


# three days with calls around an empty one; a failed call costs nothing
ROWS = [
    row(ts("2025-08-01", 9), local=True, cost=0.01, ref=0.05),
    row(ts("2025-08-01", 23), local=False, cost=0.02, ref=0.04),
    row(ts("2025-08-02", 0), local=True, cost=0.03, ref=0.10),
    row(ts("2025-08-02", 5), local=False, cost=0.5, ref=0.5, error="RateLimitedError"),
    row(ts("2025-08-04"), local=False, cost=0.20, ref=0.25),
]
EXPECTED = [  # day, calls, local, cloud, reference, savings
    ("2025-08-01", 2, 0.01, 0.02, 0.09, 0.06),
    ("2025-08-02", 2, 0.03, 0.0, 0.10, 0.07),
    ("2025-08-03", 0, 0.0, 0.0, 0.0, 0.0),
    ("2025-08-04", 1, 0.0, 0.20, 0.25, 0.05),
]


def test_daily_figures_per_utc_day_with_gaps_filled():
    got = daily(ROWS)
    assert [(d["day"], d["calls"]) for d in got] == [(e[0], e[1]) for e in EXPECTED]
    for d, (_, _, local, cloud, ref, savings) in zip(got, EXPECTED):
        assert (d["local_usd"], d["cloud_usd"], d["reference_usd"], d["savings_usd"]) == pytest.approx(
            (local, cloud, ref, savings))
    assert daily([]) == []


@pytest.fixture()
def ledger_settings(tmp_path):
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path)})
    book = CostLedger(tmp_path / "ledger.sqlite")
    for r in ROWS:
        book.record(r)
    book.close()
    return settings


class Args:
    since = until = None
    format = "json"

    def __init__(self, chart):
        self.chart = chart


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cost_report_chart_is_a_png_of_the_reports_numbers(ledger_settings, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from nlweb_local.telemetry.chart import chart_data

    out = tmp_path / "cost.png"
    assert cost.run(Args(str(out)), ledger_settings) == 0
    captured = capsys.readouterr()
    rep = json.loads(captured.out)  # stdout is still pure JSON
    assert f"chart written to {out}" in captured.err

    data = chart_data(rep)
    assert data.days == [e[0] for e in EXPECTED]
    assert data.local_usd == pytest.approx([e[2] for e in EXPECTED])
    assert data.cloud_usd == pytest.approx([e[3] for e in EXPECTED])
    assert data.reference_usd == pytest.approx([e[4] for e in EXPECTED])
    assert data.savings_usd == pytest.approx([e[5] for e in EXPECTED])
    assert sum(data.savings_usd) == pytest.approx(rep["routes"]["hybrid"]["savings_usd"])
    assert sum(data.local_usd) == pytest.approx(rep["routes"]["local"]["cost_usd"])
    assert data.reference_model == rep["assumptions"]["reference_model"] == "gpt-4o"
    assert data.tco_all_cloud == [p["tco_3y_all_cloud"] for p in rep["projection"]]
    assert data.tco_hybrid == [p["tco_3y_hybrid"] for p in rep["projection"]]
    assert [s.split("\n")[0] for s in data.scales] == ["small", "medium", "large"]

    width, height = png_size(out)
    assert (width, height) == (1540, 605)  # 14 × 5.5 inches at 110 dpi
    assert 20_000 < out.stat().st_size < 2_000_000


def test_chart_of_an_empty_period_still_draws(ledger_settings, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from nlweb_local.telemetry.chart import chart_data, render_chart

    rep = {"daily": [], "projection": [], "assumptions": {"reference_model": "gpt-4o"}}
    out = render_chart(chart_data(rep), tmp_path / "empty.png")
    assert png_size(out) == (990, 605)


def test_without_matplotlib_the_error_says_what_to_install(ledger_settings, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BadRequestError, match=r"pip install 'nlweb-local\[charts\]'"):
        cost.run(Args(str(tmp_path / "x.png")), ledger_settings)
    assert not (tmp_path / "x.png").exists()


def test_csv_and_json_carry_the_daily_figures(ledger_settings, capsys):
    class Csv:
        since = until = chart = None
        format = "csv"

    assert cost.run(Csv(), ledger_settings) == 0
    text = capsys.readouterr().out
    assert "day,2025-08-03,calls,0" in text and "day,2025-08-04,cloud_usd,0.2" in text


def test_chart_flag_is_in_the_cli_help():
    import argparse

    parser = argparse.ArgumentParser()
    cost.register(parser.add_subparsers())
    args = parser.parse_args(["cost", "report", "--chart", "spend.png"])
    assert args.chart == "spend.png"

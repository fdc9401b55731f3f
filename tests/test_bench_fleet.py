"""`nlweb-local bench fleet` runs end to end and ends with the JSON line scripts read (figures are not asserted:
speed targets are benchmarks that print figures)."""
import json

import pytest

from nlweb_local.cli.main import main

pytestmark = pytest.mark.slow


def test_bench_fleet_prints_its_figures(capsys):
    assert main(["bench", "fleet", "--calls", "80", "--overhead-calls", "2000",
                 "--priority-calls", "8", "--priority-rate", "16"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["priority_inversion_ratio"] > 0 and last["priority"]["reserve"]["calls"] == 8
    assert {"p95_ratio_p2c_vs_round_robin", "fleet_overhead_rps_ratio", "p2c", "round-robin"} <= set(last)
    assert last["p95_ratio_p2c_vs_round_robin"] > 0 and last["fleet_overhead_rps_ratio"] > 0
    assert last["round-robin"]["slow_instance_share"] == pytest.approx(1 / 3, abs=0.02)  # round robin: its turn, always


def test_bench_fleet_needs_two_instances():
    with pytest.raises(SystemExit, match="at least 2"):
        main(["bench", "fleet", "--instances", "1"])

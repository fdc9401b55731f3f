"""`nlweb-local bench fleet` runs end to end and ends with the JSON line scripts read (figures are not asserted:
speed targets are benchmarks that print figures)."""
import json

import pytest

from nlweb_local.cli.main import main

pytestmark = pytest.mark.slow


KEYS = {"p95_ratio_p2c_vs_round_robin", "affinity_ttft_ratio", "priority_inversion_ratio", "fleet_overhead_rps_ratio"}


def test_bench_fleet_prints_its_figures(capsys):
    assert main(["bench", "fleet", "--parts", "heterogeneous,3,4", "--calls", "80", "--overhead-calls", "2000",
                 "--priority-calls", "8", "--priority-rate", "16"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS | {"p2c", "round-robin"} <= set(last) and last["affinity_ttft_ratio"] is None  # part 2 not run
    assert last["priority_inversion_ratio"] > 0 and last["priority"]["reserve"]["calls"] == 8
    assert last["p95_ratio_p2c_vs_round_robin"] > 0 and last["fleet_overhead_rps_ratio"] > 0
    assert last["round-robin"]["slow_instance_share"] == pytest.approx(1 / 3, abs=0.02)  # round robin: its turn, always


def test_bench_fleet_needs_two_instances():
    with pytest.raises(SystemExit, match="at least 2"):
        main(["bench", "fleet", "--instances", "1"])


def test_bench_fleet_affinity_part_with_real_llama_servers(capsys):
    """Part 2 at its smallest: two real llama_cpp.server processes with their prompt cache on, two
    conversations of two turns per policy; only its figures are in the JSON line (the others null)."""
    pytest.importorskip("llama_cpp.server.app", reason="pip install 'llama-cpp-python[server]'")
    assert main(["bench", "fleet", "--parts", "2", "--affinity-instances", "2", "--conversations", "2", "--turns", "2",
                 "--doc-words", "40", "--answer-tokens", "4", "--affinity-n-ctx", "512", "--affinity-cache-mb", "64"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(last) and last["parts"] == ["affinity"]
    assert last["affinity_ttft_ratio"] > 0 and last["p95_ratio_p2c_vs_round_robin"] is None
    run = last["affinity"]
    assert run["with"]["calls"] == run["without"]["calls"] == 4  # 2 conversations x 2 turns, each served
    assert sum(run["with"]["served_per_instance"]) == 4  # the warm-up calls went through the other fleet


def test_bench_fleet_parts_are_numbers_or_names():
    from nlweb_local.cli.bench_fleet import parts_of

    assert parts_of("all") == ["1", "2", "3", "4"] and parts_of("overhead,1") == ["1", "4"]
    with pytest.raises(SystemExit, match="none of"):
        parts_of("5")

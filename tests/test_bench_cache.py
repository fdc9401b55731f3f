"""`nlweb-local bench cache` with tiny numbers: the workload's shape, and the figures its last line reports
(no timed assertions: the figures are printed, not judged here)."""
import json
from collections import Counter
from pathlib import Path

import pytest

from nlweb_local.cli.bench_cache import prompt_pool, workload
from nlweb_local.cli.main import main
from nlweb_local.core.errors import BadRequestError

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def test_the_workload_is_zipf_over_distinct_prompts_with_paraphrases():
    pool, paraphrases = prompt_pool(DATA)
    assert len(pool) >= 300 and len(set(pool)) == len(pool)
    assert not set(pool) & {b for bs in paraphrases.values() for b in bs}  # a paraphrase is never a prompt itself
    work = workload(pool, paraphrases, requests=2000, prompts=300, share=0.3, s=1.0, seed=1)
    assert len(work) == 2000 and len({p for _, p in work}) <= 300
    worded = sum(text != prompt for text, prompt in work)
    assert 0.25 < worded / 2000 < 0.35
    counts = Counter(p for _, p in work).most_common()
    assert counts[0][1] > 10 * counts[len(counts) // 2][1]  # a head and a long tail
    assert workload(pool, paraphrases, requests=50, prompts=20, share=0.3, s=1.0, seed=1) == \
        workload(pool, paraphrases, requests=50, prompts=20, share=0.3, s=1.0, seed=1)  # the seed fixes it
    with pytest.raises(BadRequestError, match="--prompts"):
        workload(pool, paraphrases, requests=5, prompts=len(pool) + 1, share=0.3, s=1.0, seed=1)


def run_bench(tmp_path, capsys, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)  # no nlweb-local.yaml here: defaults
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path / "data"))
    assert main(["bench", "cache", "--requests", "60", "--prompts", "15", "--data", str(DATA), *args]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_bench_cache_prints_hit_rates_and_the_hit_vs_pass_through_ratio(tmp_path, capsys, monkeypatch):
    lines = run_bench(tmp_path, capsys, monkeypatch, "--ask-questions", "0")
    figures = json.loads(lines[-1])
    assert figures["requests"] == 60 and figures["prompts"] == 15 and figures["backend"] == "in-process"
    h = figures["hit_rate"]
    assert 0 < h["exact"] <= figures["exact_hit_rate_ceiling"] and h["semantic"] == 0 and h["total"] == h["exact"]
    assert h["exact"] == figures["exact_hit_rate_ceiling"]  # no evictions: every repeated text was a hit
    lat = figures["latency_ms"]
    assert lat["hit_median"] > 0 and lat["pass_through_median"] > 0 and lat["miss_median"] > 0
    assert figures["hit_vs_pass_through"] == pytest.approx(lat["hit_median"] / lat["pass_through_median"], rel=0.01)
    assert figures["ask"] is None and figures["targets"] == {"hit_vs_pass_through": 1.2, "ask_cached_median_ms": 50.0}
    assert any("hit rate: exact" in line for line in lines)


@pytest.mark.slow
def test_bench_cache_times_cached_ask_answers_on_the_demo_site(tmp_path, capsys, monkeypatch):
    figures = json.loads(run_bench(tmp_path, capsys, monkeypatch, "--ask-questions", "2", "--ask-repeats", "3")[-1])
    ask = figures["ask"]
    assert ask["questions"] == 2 and ask["cached_answers"] == 6 and ask["cached_median_ms"] > 0

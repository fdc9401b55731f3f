"""`nlweb-local eval rank` and the replay provider: the /ask ranking code over fixed, labelled candidates."""
import json

from nlweb_local.cli.main import main

ROWS = [
    ("curry ideas", [], "https://e.example/curry", "Recipe", "Chickpea curry", "A vegetarian chickpea curry", 95),
    ("curry ideas", [], "https://e.example/dal", "Recipe", "Red lentil dal", "Lentils with cumin", 70),
    ("curry ideas", [], "https://e.example/tart", "Recipe", "Lemon tart", "A sweet lemon tart", 10),
    ("curry ideas", [], "https://e.example/tent", "Product", "Ridge tent", "A two-person tent", 0),
    ("which are vegan?", ["curry ideas"], "https://e.example/curry", "Recipe", "Chickpea curry", "A vegetarian chickpea curry", 80),
    ("which are vegan?", ["curry ideas"], "https://e.example/dal", "Recipe", "Red lentil dal", "Lentils with cumin", 90),
    ("which are vegan?", ["curry ideas"], "https://e.example/tart", "Recipe", "Lemon tart", "A sweet lemon tart", 5),
]


def write_data(path):
    path.write_text("\n".join(json.dumps({
        "query": q, "prev": prev, "url": url, "site": "e", "name": name,
        "schema_object": {"@type": typ, "name": name, "description": desc},
        "label": {"score": score, "description": f"fits {score}"}}) for q, prev, url, typ, name, desc, score in ROWS))


def test_replay_reproduces_the_recorded_order_and_counts_cloud_use(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, out = tmp_path / "d.jsonl", tmp_path / "r.jsonl"
    write_data(data)
    assert main(["eval", "rank", "--data", str(data), "--out", str(out), "--strategy", "replay", "--llm-rank-limit", "50"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["cloud_calls"] == 7 and summary["cloud_prompt_tokens"] > 0 and summary["cloud_cost_usd"] > 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["query"] for x in lines] == ["curry ideas", "which are vegan?"]
    assert [r["url"].rsplit("/", 1)[1] for r in lines[0]["ranking"]] == ["curry", "dal", "tart", "tent"]
    assert [r["url"].rsplit("/", 1)[1] for r in lines[1]["ranking"]] == ["dal", "curry", "tart"]
    assert all(isinstance(x["seconds"], float) for x in lines)


def test_similarity_only_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, out = tmp_path / "d.jsonl", tmp_path / "r.jsonl"
    write_data(data)
    assert main(["eval", "rank", "--data", str(data), "--out", str(out), "--strategy", "similarity"]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["ranking"][0]["url"] == "https://e.example/curry" and len(first["ranking"]) == 4
    (tmp_path / "bad.jsonl").write_text('{"query": "x"}\n')
    assert main(["eval", "rank", "--data", str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_curve_prints_quality_against_cloud_share_and_calibrates_the_band(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    write_data(data)
    assert main(["eval", "curve", "--data", str(data), "--bands", "0,1,2,4", "--target-share", "0.6",
                 "--baseline", "trimmed"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    curve = {r["band"]: r for r in summary["curve"]}
    assert [curve[b]["cloud_calls"] for b in (0, 1, 2, 4)] == [0, 2, 4, 7]  # the band per query, capped by its size
    assert curve[4]["share_of_trimmed_cloud_only"] == 1.0 and curve[0]["cloud_prompt_tokens"] == 0
    assert summary["nlweb_cloud_only_tokens"] > summary["trimmed_cloud_only_tokens"]  # whole items cost more
    assert curve[4]["ndcg@10"] == 1.0  # every candidate judged by the recorded model: its own order
    assert curve[0]["ndcg@10"] < 1.0
    shares = [curve[b]["share_of_trimmed_cloud_only"] for b in (0, 1, 2, 4)]
    assert shares == sorted(shares)
    cal = summary["calibrated"]
    assert cal["llm_rank_limit"] == max(b for b in (0, 1, 2, 4) if curve[b]["share_of_trimmed_cloud_only"] <= 0.6)
    assert "search.llm_rank_limit =" in out


def test_ndcg_matches_the_scorers_formula():
    from nlweb_local.cli.eval_cmd import ndcg_at

    labels = {"a": 100, "b": 50, "c": 0}
    assert ndcg_at(["a", "b", "c"], labels) == 1.0
    worst = ndcg_at(["c", "b", "a"], labels)
    g = {u: 2 ** (s / 25) - 1 for u, s in labels.items()}
    import math
    expect = (g["c"] / 1 + g["b"] / math.log2(3) + g["a"] / 2) / (g["a"] + g["b"] / math.log2(3) + g["c"] / 2)
    assert abs(worst - expect) < 1e-12


def test_curve_needs_labels_and_sane_bands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    write_data(data)
    assert main(["eval", "curve", "--data", str(data), "--bands", "0,ten"]) == 2
    assert "--bands" in capsys.readouterr().err
    unlabelled = tmp_path / "u.jsonl"
    unlabelled.write_text("\n".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "label"})
                                    for x in data.read_text().splitlines()))
    assert main(["eval", "curve", "--data", str(unlabelled)]) == 2
    assert "label" in capsys.readouterr().err
    assert main(["eval", "rank", "--data", str(data)]) == 2  # rank without --out
    assert "--out" in capsys.readouterr().err

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

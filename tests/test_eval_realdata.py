"""`nlweb-local eval realdata`: its metrics, its input checks, and one run over a tiny real-data folder."""
import argparse
import asyncio
import json

import pytest

from nlweb_local.cli.eval_realdata import ndcg_at, precision_at, read_questions, run_realdata_eval, summarise
from nlweb_local.config.settings import SearchSettings, Settings
from nlweb_local.core.errors import SourceError
from nlweb_local.server.params import parse_ask


def test_precision_is_capped_by_the_relevant_count():
    assert precision_at(["a", "x", "y"], {"a"}) == 1.0
    assert precision_at(["x", "a", "b", "y", "z"], {"a", "b", "c", "d", "e", "f"}) == 0.4
    assert ndcg_at(["a"], {"a"}) == 1.0 and ndcg_at(["x", "a"], {"a"}) < 1.0


def test_summary_counts_what_unanswerable_questions_show():
    rows = [({"relevant": ["a"], "site": "s"}, ["a", "b"]), ({"relevant": [], "site": "s"}, ["b", "c"])]
    m = summarise(rows)
    assert m["p@5"] == 1.0 and m["shown_unanswerable"] == 2 and m["answerable"] == 1 and m["unanswerable"] == 1


def test_bad_question_files_are_explained(tmp_path):
    with pytest.raises(SourceError, match="questions.jsonl"):
        read_questions(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"query": "x"}\n')
    with pytest.raises(SourceError, match=r"questions.jsonl:1: expected \{query, site, relevant"):
        read_questions(tmp_path)


def test_min_score_left_out_is_the_default_rule_and_given_is_fixed():
    s = SearchSettings()
    assert parse_ask({"query": "pie"}, None, s, "v3").ask.min_score is None
    assert parse_ask({"query": "pie", "min_score": "51"}, None, s, "v3").ask.min_score == 51


@pytest.mark.slow
def test_a_run_over_a_tiny_folder(tmp_path, capsys):
    items = [("https://m.example/arrival", {"@type": "Movie", "name": "Arrival", "description":
              "A linguist learns to communicate with extraterrestrials who have arrived on Earth."}),
             ("https://m.example/tmnt", {"@type": "Movie", "name": "Teenage Mutant Ninja Turtles II",
              "description": "The Turtles fight the Shredder and two new mutant villains."})]
    (tmp_path / "films.tsv").write_text("".join(f"{u}\t{json.dumps(o)}\n" for u, o in items))
    (tmp_path / "questions.jsonl").write_text(
        json.dumps({"query": "talking with aliens", "site": "films", "relevant": ["https://m.example/arrival"]}) + "\n" +
        json.dumps({"query": "cheap flights to Lisbon", "site": "films", "relevant": []}) + "\n")
    settings = Settings(data_dir=str(tmp_path / "unused"))
    args = argparse.Namespace(data=str(tmp_path), strategy="similarity", limit=None, out=str(tmp_path / "out.jsonl"))
    assert asyncio.run(run_realdata_eval(args, settings)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    default = summary["results"][0]
    assert default["cut_off"] == "default rule" and default["p@5"] == 1.0
    assert not (tmp_path / "unused").exists()  # the user's data folder is not touched

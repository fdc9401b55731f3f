"""`nlweb-local eval answers`: its input checks, its summary, and a run of six questions through the real
pipeline and the embedded SmolLM2 model (the grounded path meets the target)."""
import argparse
import asyncio
import json
import shutil
from pathlib import Path

import pytest

from nlweb_local.cli.eval_answers import TARGET_RATE, judge, read_questions, run_answers_eval, summarise
from nlweb_local.config.settings import load_settings
from nlweb_local.core.errors import SourceError

SET = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "answers"
CHAI = {"@type": "Recipe", "name": "Gentle Cardamom Chai", "totalTime": "PT12M"}


def test_bad_question_files_are_explained(tmp_path):
    with pytest.raises(SourceError, match="questions.jsonl"):
        read_questions(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"query": "x"}\n')
    with pytest.raises(SourceError, match=r"questions.jsonl:1: expected \{query, site\}"):
        read_questions(tmp_path)


def test_the_repository_set_has_sixty_questions_over_the_demo_and_other_sites():
    qs = read_questions(SET)
    sites = {q["site"] for q in qs}
    assert len(qs) >= 60 and "cedarvalley" in sites and len(sites - {"cedarvalley"}) >= 1
    assert all((SET / f"{s}.tsv").exists() for s in sites - {"cedarvalley"})


def test_judge_and_summary_count_facts_citations_and_restating_answers():
    row = {"query": "a quick chai", "site": "s", "mode": "generate", "seconds": 1.0, "failure": "",
           "items": [{"url": "u", "name": "n", "schema_object": json.dumps(CHAI)}]}
    good = judge({**row, "answer": "The Gentle Cardamom Chai takes 12 minutes [1]."})
    bad = judge({**row, "answer": "The Gentle Cardamom Chai takes 20 minutes [2]."})
    echo = judge({**row, "answer": "Here is a quick chai."})
    assert (good["facts"], good["unsupported"], good["bad_citations"], good["restates"]) == (2, [], 0, False)
    assert bad["unsupported"] == ["duration: 20 minutes"] and bad["bad_citations"] == 1
    assert echo["restates"]
    m = summarise([good, bad, echo])
    assert m["facts"] == 4 and m["unsupported"] == 1 and m["unsupported_rate"] == 0.25
    assert m["citations"] == 2 and m["citation_accuracy"] == 0.5 and m["restating"] == 1


@pytest.mark.slow
def test_six_questions_through_the_real_pipeline_meet_the_target(tmp_path, capsys):
    """Four questions about the demo site and two about NLWeb's recorded eventbrite items, each answered in
    summarize and generate mode by the embedded model, grounded, then judged."""
    qs = read_questions(SET)
    picked = [q for q in qs if q["site"] == "cedarvalley"][:4] + [q for q in qs if q["site"] == "eventbrite"][:2]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in picked))
    shutil.copy(SET / "eventbrite.tsv", tmp_path / "eventbrite.tsv")
    settings = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(tmp_path / "unused")})
    args = argparse.Namespace(data=str(tmp_path), limit=None, modes=None, deployment=None, rejudge=None, deadline=None,
                              out=str(tmp_path / "answers.jsonl"))
    assert asyncio.run(run_answers_eval(args, settings)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    overall = summary["overall"]
    assert overall["answers"] == 12 and overall["facts"] > 0
    assert overall["unsupported_rate"] <= TARGET_RATE
    assert overall["bad_citations"] == 0 and overall["restating"] == 0
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert all(r["answer"] and r["items"] for r in rows)
    assert summary["by_mode"]["generate"]["citations"] > 0 and summary["by_mode"]["summarize"]["citations"] == 0
    assert not (tmp_path / "unused").exists()

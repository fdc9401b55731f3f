"""The follow-up test that decides whether a question in a conversation is rewritten with the earlier ones."""
import json
from pathlib import Path

import pytest

from nlweb_local.search.followup import refers_back

CONVERSATIONS = Path(__file__).parent.parent / "benchmarks/data/realdata/conversations.jsonl"


@pytest.mark.parametrize("query", [
    "now, how about some that portray AI as a killer machine", "only vegetarian ones", "which of them are vegan?",
    "cheaper ones", "what about tents?", "is it open on Saturday?", "without ginger", "and the one with Tom Hardy?",
    "a quicker version", "for toddlers", "the same director's later work", "How about something spicier?",
])
def test_questions_that_refer_back(query):
    assert refers_back(query)


@pytest.mark.parametrize("query", [
    "a waterproof jacket", "a quick vegetarian dinner", "movies that involve an AI, but that portray the AI in a good light",
    "which museums are free on Sundays?", "lower back pain exercises", "better sleep tips", "some good sushi places",
    "Are there any vegan bakeries in Austin?", "one-pot pasta", "", "   ",
])
def test_questions_that_stand_alone(query):
    assert not refers_back(query)


def test_the_labelled_conversations_are_mostly_right():
    rows = [json.loads(line) for line in CONVERSATIONS.read_text().splitlines() if line.strip()]
    right = sum(refers_back(r["query"]) == r["follow_up"] for r in rows)
    topic_changes = [r for r in rows if not r["follow_up"]]
    assert len(rows) >= 30
    assert all(not refers_back(r["query"]) for r in topic_changes)  # a topic change is never merged
    assert right / len(rows) >= 0.9

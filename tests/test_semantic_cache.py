"""The semantic cache index (cache/semantic.py), its lexical vetoes (cache/lexical.py) and `eval cache`.

The precision test runs the real all-MiniLM-L6-v2 over a fixed subset of benchmarks/data/cache_pairs.jsonl
with the shipped threshold, through the index itself: a wrong hit there is a wrong answer in production."""
import asyncio
import hashlib
import json
import math
import threading
from pathlib import Path

import pytest

from nlweb_local.cache.lexical import features, veto
from nlweb_local.cache.semantic import SemanticIndex, chat_scope, question_of, standalone_question
from nlweb_local.config.settings import SemanticCacheSettings, load_settings
from nlweb_local.core.errors import BadRequestError
from nlweb_local.core.types import ChatRequest, EmbeddingResponse, Message

PAIRS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "cache_pairs.jsonl"


def pairs_subset(step: int = 7) -> list[dict]:
    """Every `step`th pair of the benchmark set (it is grouped by kind, so each kind is represented)."""
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    return rows[::step]


class WordEmbedder:
    """A cheap, deterministic stand-in: a unit bag of hashed words (same words → similarity 1)."""

    dimension = 64

    def __init__(self):
        self.calls = 0
        self.threads: set[int] = set()

    def embed(self, texts):
        self.calls += 1
        self.threads.add(threading.get_ident())
        out = []
        for t in texts:
            v = [0.0] * self.dimension
            for w in t.lower().split():
                v[int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dimension] += 1.0
            n = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / n for x in v])
        return out


def veto_of(a: str, b: str):
    return veto(features(a), features(b))


# -- the vetoes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, expected", [
    ("tents for 2 people", "tents for 4 people", "numbers"),
    ("tents for four people", "tents for 4 people", None),
    ("events this Saturday", "events this Sunday", "numbers"),
    ("farmers market on Saturday", "farmers market on Saturdays", None),
    ("concerts this weekend", "concerts next weekend", "numbers"),
    ("events today", "events tomorrow", "numbers"),
    ("pasta recipes with eggs", "pasta recipes without eggs", "negation"),
    ("events that require tickets", "events that don't require tickets", "negation"),
    ("nut-free cookies", "cookies without nuts", None),  # both negated
    ("dairy free cookies", "cookies with dairy", "negation"),
    ("Is admission free at the museum?", "Is admission to the museum free?", None),  # "free" as a price
    ("indoor activities for kids", "outdoor activities for kids", "contrast"),
    ("vegan lasagna", "vegetarian lasagna", "contrast"),
    ("hikes under 5 miles", "hikes over 5 miles", "contrast"),
    ("cheap tents", "affordable tents", None),  # the same value of the group
    ("hiking trails near Boulder", "hiking trails near Denver", "entities"),
    ("What is the capital of Australia?", "which city is australia's capital", None),  # case-insensitive
    ("Denver hikes", "Boulder hikes", "entities"),  # a capitalised first word that is no opener
    ("What events are on?", "Which events are on?", None),  # openers are not names
    ("trail running shoes for wide feet", "trail running shoes for narrow feet", "substitution"),
    ("how to upload a podcast to Spotify", "how to download a podcast from Spotify", "substitution"),
    ("knitting podcasts", "podcasts about knitting", None),  # only function words differ
    ("podcasts to learn Spanish", "Spanish learning podcasts", None),  # two forms of one word
    ("How do I thicken a soup?", "ways to make soup thicker", None),
])
def test_vetoes(a, b, expected):
    assert veto_of(a, b) == expected
    assert veto_of(b, a) == expected  # symmetric


@pytest.mark.parametrize("a, b", [
    ("tents under $1,200", "tents that cost less than 1200 dollars"),
    ("recipe for two dozen cookies", "cookie recipe that makes 24"),
    ("twenty-five minute dinners", "dinners in 25 minutes"),
    ("the vegan one", "a vegan dish"),  # "one" as a pronoun is not a number
    ("average time to walk one mile", "how long to walk 1 mile"),
    ("a one-person tent", "a 1-person tent"),
    ("5k runs in October", "October 5K races"),
    ("no more than 3 hours of driving", "at most 3 hours of driving"),
])
def test_numbers_are_read_the_same_however_written(a, b):
    assert features(a).numbers == features(b).numbers
    assert veto(features(a), features(b), ("numbers", "negation")) is None


def test_a_veto_can_be_switched_off():
    a, b = features("tents for 2 people"), features("tents for 4 people")
    assert veto(a, b, ("negation", "entities")) is None and veto(a, b, ("numbers",)) == "numbers"


# -- which chat requests qualify ----------------------------------------------------------------------
@pytest.mark.parametrize("messages, ok", [
    ([{"role": "user", "content": "How do I waterproof hiking boots?"}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "vegan lasagna recipe"}], True),
    ([{"role": "user", "content": "recipes?"}, {"role": "assistant", "content": "Which?"},
      {"role": "user", "content": "vegan lasagna recipe"}], False),  # history
    ([{"role": "user", "content": "What about the vegan one?"}], False),  # a follow-up
    ([{"role": "user", "content": "Is it vegan?"}], False),  # a pronoun pointing elsewhere
    ([{"role": "user", "content": "Summarize this article please"}], False),
    ([{"role": "user", "content": 'Translate "good morning" into French'}], False),  # about quoted material
    ([{"role": "user", "content": "Fix this:\nprint(1"}], False),
    ([{"role": "user", "content": "thanks"}], False),
    ([{"role": "user", "content": "x " * 200}], False),  # too long
    ([{"role": "user", "content": "no-bake cookie recipes"}], True),
    ([{"role": "user", "content": "What's on this weekend?"}], True),
    ([Message("user", "best lightweight tent for backpacking")], True),
])
def test_standalone_question(messages, ok):
    assert standalone_question(messages) is ok


def test_tools_and_schemas_are_never_eligible():
    msgs = [Message("user", "weather in Seattle today")]
    assert standalone_question(msgs)
    assert not standalone_question(msgs, tools=[{"type": "function", "function": {"name": "w"}}])
    assert not standalone_question(msgs, json_schema={"type": "object"})
    req = ChatRequest(messages=list(msgs))
    assert question_of(req) == "weather in Seattle today"
    req.json_schema = {"type": "object"}
    assert question_of(req) is None


def test_chat_scope_separates_system_prompts_and_sampling():
    q = Message("user", "vegan lasagna recipe")
    base = ChatRequest(messages=[Message("system", "Be brief."), q])
    assert chat_scope(base) == chat_scope(ChatRequest(messages=[Message("system", "Be brief."), q]))
    assert chat_scope(base) != chat_scope(ChatRequest(messages=[Message("system", "Answer in French."), q]))
    assert chat_scope(base) != chat_scope(ChatRequest(messages=[Message("system", "Be brief."), q], max_tokens=9))


# -- the index: isolation, thresholds, bounds, the event loop -----------------------------------------
async def test_a_namespace_never_sees_another_namespaces_entries():
    index = SemanticIndex(WordEmbedder())
    await index.add("tenant-a", "vegan lasagna recipe", "key-a")
    assert await index.lookup("tenant-a", "vegan lasagna recipe") == ("key-a", pytest.approx(1.0))
    assert await index.lookup("tenant-b", "vegan lasagna recipe") is None
    await index.add("tenant-b", "vegan lasagna recipe", "key-b")
    assert (await index.lookup("tenant-a", "vegan  lasagna recipe"))[0] == "key-a"  # whitespace does not count
    assert (await index.lookup("tenant-b", "vegan lasagna recipe"))[0] == "key-b"
    assert index.drop_namespace("tenant-a") == 1
    assert await index.lookup("tenant-a", "vegan lasagna recipe") is None
    assert (await index.lookup("tenant-b", "vegan lasagna recipe"))[0] == "key-b"


async def test_threshold_per_namespace_and_the_vetoes_refuse_close_texts():
    emb = WordEmbedder()
    s = SemanticCacheSettings(threshold=0.5, thresholds={"ask": 0.99, "ask:strict-site": 1.0})
    index = SemanticIndex(emb, s)
    assert (index.threshold("ask:site"), index.threshold("ask:strict-site"), index.threshold("chat:x"),
            index.threshold("asking")) == (0.99, 1.0, 0.5, 0.5)
    await index.add("chat:x", "tents for 2 people under 300 dollars", "k2")
    hit = await index.lookup("chat:x", "tents for 2 people under 300 dollars please")
    assert hit is not None and hit[0] == "k2" and 0.5 <= hit[1] < 1.0
    assert await index.lookup("chat:x", "tents for 4 people under 300 dollars") is None  # close, another number
    assert index.stats().vetoed == {"numbers": 1}
    await index.add("ask:site", "tents for 2 people under 300 dollars", "k3")
    assert await index.lookup("ask:site", "tents for 2 people under 300 dollars please") is None  # below 0.99
    no_vetoes = SemanticIndex(emb, SemanticCacheSettings(threshold=0.5, lexical_vetoes=False))
    await no_vetoes.add("chat:x", "tents for 2 people under 300 dollars", "k2")
    assert (await no_vetoes.lookup("chat:x", "tents for 4 people under 300 dollars"))[0] == "k2"  # the wrong hit


async def test_the_best_candidate_that_passes_the_vetoes_wins():
    index = SemanticIndex(WordEmbedder(), SemanticCacheSettings(threshold=0.5))
    await index.add("n", "camping tents for 2 people", "two")
    await index.add("n", "camping tents for 4 people", "four")
    assert (await index.lookup("n", "camping tents for 4 people"))[0] == "four"
    assert (await index.lookup("n", "camping tents for two people"))[0] == "two"  # "two" = 2 by the number veto


async def test_bounds_evict_the_least_recently_used():
    emb = WordEmbedder()
    index = SemanticIndex(emb, SemanticCacheSettings(max_entries=3, max_entries_per_namespace=2))
    await index.add("a", "first question here", "a1")
    await index.add("a", "second question here", "a2")
    assert await index.lookup("a", "first question here") is not None  # a1 is now the most recent in a
    await index.add("a", "third question here", "a3")  # a is full: its least recently used (a2) goes
    assert await index.lookup("a", "second question here") is None
    assert (await index.lookup("a", "first question here"))[0] == "a1"
    await index.add("b", "another namespace entirely", "b1")  # 3 in all: the bound
    await index.add("b", "one more in namespace b", "b2")  # over the total: the oldest overall (a3) goes
    assert len(index) == 3 and await index.lookup("a", "third question here") is None
    st = index.stats()
    assert (st.entries, st.namespaces, st.evictions, st.max_entries) == (3, 2, 2, 3)
    await index.add("a", "first question here", "a1")  # storing a key again replaces, nothing evicted
    assert index.stats().evictions == 2
    for i in range(50):  # many namespaces: still 3 entries, and emptied namespaces are dropped
        await index.add(f"ns{i}", f"question number {i}", f"k{i}")
    assert len(index) == 3 and index.stats().namespaces == 3
    index.discard("ns49", "k49")
    assert len(index) == 2 and await index.lookup("ns49", "question number 49") is None


async def test_a_namespace_that_shrinks_gives_its_memory_back():
    index = SemanticIndex(WordEmbedder())
    for i in range(64):
        await index.add("n", f"question number {i} about tents", f"k{i}")
    rows = index._spaces["n"].vectors.shape[0]
    for i in range(62):
        index.discard("n", f"k{i}")
    assert index._spaces["n"].vectors.shape[0] < rows / 4  # compacted
    assert (await index.lookup("n", "question number 63 about tents"))[0] == "k63"
    assert (await index.lookup("n", "question number 62 about tents"))[0] == "k62"
    await index.add("n", "question number 99 about tents", "k99")
    assert (await index.lookup("n", "question number 99 about tents"))[0] == "k99" and len(index) == 3


async def test_a_text_too_long_is_neither_stored_nor_looked_up():
    emb = WordEmbedder()
    index = SemanticIndex(emb, SemanticCacheSettings(max_chars=20))
    await index.add("n", "a question far longer than twenty characters", "k")
    assert len(index) == 0 and emb.calls == 0
    assert await index.lookup("n", "short one") is None and emb.calls == 0  # an empty namespace: no embedding


async def test_add_after_a_missed_lookup_does_not_embed_again():
    emb = WordEmbedder()
    index = SemanticIndex(emb)
    await index.add("n", "vegan lasagna recipe", "k1")
    calls = emb.calls
    assert await index.lookup("n", "beef stew recipe tonight") is None
    await index.add("n", "beef stew recipe tonight", "k2")
    assert emb.calls == calls + 1


async def test_lookup_runs_the_model_off_the_event_loop():
    """The embedding call waits for the event loop to do something: run on the loop, it could never return."""
    loop_thread = threading.get_ident()
    entered, release = threading.Event(), threading.Event()

    class Blocking(WordEmbedder):
        def embed(self, texts):
            entered.set()
            released = release.wait(timeout=10)  # a guard only: set by the loop below within microseconds
            assert released, "the event loop was blocked by the embedding call"
            return super().embed(texts)

    emb = Blocking()
    release.set()
    index = SemanticIndex(emb)
    await index.add("n", "vegan lasagna recipe", "k")
    entered.clear()
    release.clear()
    task = asyncio.create_task(index.lookup("n", "vegetarian lasagna recipe"))
    while not entered.is_set():  # the loop keeps running while the model works
        await asyncio.sleep(0.001)
    release.set()
    await task
    assert loop_thread not in emb.threads


async def test_an_async_embedding_provider_works_too():
    words = WordEmbedder()

    class AsyncProvider:
        async def embed(self, texts):
            return EmbeddingResponse(words.embed(texts))

    index = SemanticIndex(AsyncProvider())
    await index.add("n", "vegan lasagna recipe", "k")
    assert (await index.lookup("n", "vegan lasagna recipe"))[0] == "k"


# -- settings -----------------------------------------------------------------------------------------
def test_settings_defaults_and_validation(tmp_path):
    s = load_settings(environ={"NLWEB_LOCAL_SEMANTIC_CACHE__THRESHOLD": "0.95"})
    assert s.semantic_cache.threshold == 0.95 and s.semantic_cache.enabled is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("semantic_cache:\n  thresholds: {ask: 1.5}\n")
    with pytest.raises(BadRequestError, match="semantic_cache"):
        load_settings(bad, environ={})
    bad.write_text("semantic_cache:\n  threshold: 0\n")
    with pytest.raises(BadRequestError, match="semantic_cache.threshold"):
        load_settings(bad, environ={})


# -- with the real model: the measured precision ------------------------------------------------------
async def test_shipped_threshold_keeps_precision_on_the_benchmark_subset(embedder):
    pairs = pairs_subset()
    assert len(pairs) >= 40 and {p["kind"] for p in pairs} >= {"paraphrase", "constraint", "negation", "entity",
                                                                 "number"}
    settings = SemanticCacheSettings()
    index = SemanticIndex(embedder.provider, settings)
    hits = wrong = same_hits = 0
    for i, p in enumerate(pairs):
        await index.add(f"pair{i}", p["a"], f"key{i}")
        hit = await index.lookup(f"pair{i}", p["b"])
        if hit is not None:
            assert hit[0] == f"key{i}" and hit[1] >= settings.threshold
            hits += 1
            wrong += not p["same"]
            same_hits += p["same"]
    same = sum(p["same"] for p in pairs)
    assert hits and (hits - wrong) / hits >= 0.98, f"{wrong} wrong hits of {hits}"
    assert same_hits / same >= 0.4, f"hit rate {same_hits}/{same}"


async def test_real_model_paraphrase_hits_and_near_miss_is_vetoed(embedder):
    index = SemanticIndex(embedder.provider, SemanticCacheSettings())
    await index.add("ask:demo", "camping tents for 2 people", "k")
    hit = await index.lookup("ask:demo", "camping tents for two people")
    assert hit is not None and hit[0] == "k" and hit[1] >= 0.8
    assert await index.lookup("ask:demo", "camping tents for 4 people") is None
    assert index.stats().vetoed == {"numbers": 1}  # the cosine alone would have served it
    await index.add("ask:demo", "science podcasts for kids", "s")
    assert (await index.lookup("ask:demo", "kid-friendly science podcasts"))[0] == "s"


def test_eval_cache_prints_the_curve_and_the_shipped_threshold(tmp_path, capsys, monkeypatch, embedder):
    from nlweb_local.cli.main import main
    import nlweb_local.server.components as components

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(components, "build_embedder", lambda settings: embedder)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in pairs_subset()))
    assert main(["eval", "cache", "--data", str(data), "--thresholds", "0.8:0.9:0.05"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["threshold"] == SemanticCacheSettings().threshold
    assert summary["precision"] >= 0.98 and 0 < summary["hit_rate"] <= 1 and summary["meets_target"]
    assert summary["pairs"] == len(pairs_subset()) and summary["raw_hit_rate"] >= summary["hit_rate"]
    assert any("<- configured" in line for line in out) and any(line.strip().startswith("0.85") for line in out)
    (tmp_path / "bad.jsonl").write_text('{"a": "x", "b": "y"}\n')
    assert main(["eval", "cache", "--data", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["eval", "cache", "--data", str(data), "--thresholds", "0.9:0.8:0.1"]) == 2

"""The /ask pipeline's logic with a scripted LLM over the real embedder and the real store."""
import json
import re

import pytest

from nlweb_local.config.settings import SearchSettings
from nlweb_local.core.errors import OverloadedError, ProviderConnectionError
from nlweb_local.core.types import Item, TaskKind
from nlweb_local.providers.testing import FunctionLLM
from nlweb_local.search.events import (AskRequest, Begin, Decontextualized, End, Failure, Generated, NoResults, Notice,
                                       Results, Summary)
from nlweb_local.search.pipeline import AskPipeline

ITEMS = [
    ("https://t.example/curry", "Chickpea curry", "Recipe", "A vegetarian chickpea curry with spinach"),
    ("https://t.example/dal", "Red lentil dal", "Recipe", "Vegetarian lentil dal with cumin"),
    ("https://t.example/steak", "Grilled steak", "Recipe", "Beef steak with pepper sauce"),
    ("https://t.example/tent", "Ridge 2 tent", "Product", "Two-person backpacking tent"),
    ("https://t.example/stove", "Pocket stove", "Product", "Small camping stove"),
]


@pytest.fixture()
def loaded(store, embedder):
    items = [Item(u, n, "t", json.dumps({"@type": t, "name": n, "description": d})) for u, n, t, d in ITEMS]
    store.upsert(items, embedder.embed([f"{n}. {d}" for _, n, _, d in ITEMS]))
    return store


def scores_by_name(table, default=10):
    def answer(task, prompt, schema):
        if task is TaskKind.RANK:
            item = prompt.split("Item: ", 1)[1]
            name = re.match(r"\w+: ([^.]+)", item).group(1)
            return json.dumps({"score": table.get(name, default), "description": f"about {name}"})
        if task is TaskKind.SUMMARIZE:
            return "Chickpea curry is made with spinach."
        if task is TaskKind.GENERATE:
            return "Try the Chickpea curry [1]."
        return '{"decontextualized_query": "vegetarian curry recipes"}'
    return answer


async def collect(pipeline, req):
    return [ev async for ev in pipeline.run(req)]


def settings(**kw):
    return SearchSettings(**{"llm_weight": 1.0, "calibrate_llm": False, "llm_rank_limit": 10, **kw})


async def test_list_mode_early_sends_and_filters(loaded, embedder):
    llm = FunctionLLM(scores_by_name({"Chickpea curry": 90, "Red lentil dal": 70, "Grilled steak": 55}))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()), AskRequest("vegetarian curry"))
    assert isinstance(events[0], Begin) and isinstance(events[-1], End) and not events[-1].error
    batches = [e for e in events if isinstance(e, Results)]
    urls = [r.item.url for b in batches for r in b.items]
    # items above 59 came one by one as soon as scored; 55 > min_score 51 comes at the end; 10s are dropped
    assert all(len(b.items) == 1 for b in batches[:2])
    assert set(urls) == {"https://t.example/curry", "https://t.example/dal", "https://t.example/steak"}
    assert urls[-1] == "https://t.example/steak"
    assert {r.description for b in batches for r in b.items} >= {"A vegetarian chickpea curry with spinach"}
    assert len([c for c in llm.calls if c[0] is TaskKind.RANK]) == len(ITEMS)


async def test_min_score_and_max_results(loaded, embedder):
    llm = FunctionLLM(scores_by_name({"Chickpea curry": 90, "Red lentil dal": 80, "Grilled steak": 75}))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()), AskRequest("curry", min_score=76, max_results=1))
    items = [r for e in events if isinstance(e, Results) for r in e.items]
    assert [r.item.name for r in items] == ["Chickpea curry"]


async def test_unknown_site_gives_no_results(loaded, embedder):
    llm = FunctionLLM(scores_by_name({}))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()), AskRequest("curry", sites=["nosuchsite"]))
    assert [type(e) for e in events] == [Begin, NoResults, End]
    assert "nosuchsite" in events[1].message
    assert llm.calls == []


async def test_wrong_shaped_answers_are_coerced_or_dropped(loaded, embedder):
    def answer(task, prompt, schema):
        if "Chickpea" in prompt:
            return '```json\n{"score": "88", "description": "great"}\n```'
        if "lentil" in prompt:
            return "I think this is a good one!"  # no JSON at all: dropped and counted
        return '{"score": 5, "description": "no"}'
    events = await collect(AskPipeline(FunctionLLM(answer), embedder, loaded, settings()), AskRequest("curry"))
    items = [r for e in events if isinstance(e, Results) for r in e.items]
    assert [(r.item.name, r.score) for r in items] == [("Chickpea curry", 88)]
    assert events[-1].stats["dropped"] == 1


async def test_engine_fault_degrades_to_similarity_with_a_notice(loaded, embedder):
    def answer(task, prompt, schema):
        raise ProviderConnectionError("engine down")
    events = await collect(AskPipeline(FunctionLLM(answer), embedder, loaded, settings(min_score=0)),
                           AskRequest("vegetarian chickpea curry", min_score=0))
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "similarity" in notices[0].text
    items = [r for e in events if isinstance(e, Results) for r in e.items]
    assert items and items[0].item.name == "Chickpea curry"
    assert not any(isinstance(e, Failure) for e in events)


async def test_follow_up_is_decontextualised(loaded, embedder):
    llm = FunctionLLM(scores_by_name({"Chickpea curry": 90}))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()),
                           AskRequest("only vegetarian ones", prev=["curry recipes"]))
    dq = [e for e in events if isinstance(e, Decontextualized)]
    assert dq and dq[0].decontextualized == "vegetarian curry recipes" and dq[0].original == "only vegetarian ones"
    assert llm.calls[0][0] is TaskKind.DECONTEXTUALIZE and "curry recipes" in llm.calls[0][1]
    rank_prompts = [p for t, p in llm.calls if t is TaskKind.RANK]
    assert all("vegetarian curry recipes" in p for p in rank_prompts)


async def test_given_decontextualized_query_skips_the_llm_step(loaded, embedder):
    llm = FunctionLLM(scores_by_name({}))
    await collect(AskPipeline(llm, embedder, loaded, settings()),
                  AskRequest("those", prev=["x"], decontextualized_query="camping stove"))
    assert all(t is TaskKind.RANK for t, _ in llm.calls)


async def test_summarize_and_generate(loaded, embedder):
    llm = FunctionLLM(scores_by_name({"Chickpea curry": 90, "Red lentil dal": 80}))
    p = AskPipeline(llm, embedder, loaded, settings())
    ev = await collect(p, AskRequest("curry", mode="summarize"))
    assert isinstance(ev[-2], Summary) and ev[-2].text == "Chickpea curry is made with spinach."
    assert ev[-2].items[0].item.name == "Chickpea curry"
    ev = await collect(p, AskRequest("curry", mode="generate"))
    gen = ev[-2]
    assert isinstance(gen, Generated) and gen.answer == "Try the Chickpea curry [1]."
    assert gen.items[0].item.name == "Chickpea curry"
    assert ev[-1].stats["grounding"] == {"kept": 1, "dropped": 0, "recited": 0, "fallback": False}


async def test_answers_are_grounded_in_the_items(loaded, embedder):
    """The model's invented sentence is removed, a citation re-pointed; with nothing left the answer is the
    items' own facts; with grounding off the text is the model's."""
    def answer(table):
        def write(task, prompt, schema):
            if task is TaskKind.RANK:
                return scores_by_name({"Chickpea curry": 90, "Red lentil dal": 80})(task, prompt, schema)
            return table[task]
        return write

    invented = {TaskKind.GENERATE: "You asked about curry. The Red lentil dal has cumin [1]. "
                                   "It won a prize in 1998 at the Delhi Fair [2].",
                TaskKind.SUMMARIZE: "Curry recipes for curry."}
    p = AskPipeline(FunctionLLM(answer(invented)), embedder, loaded, settings())
    ev = await collect(p, AskRequest("curry", mode="generate"))
    assert ev[-2].answer == "The Red lentil dal has cumin [2]."
    assert ev[-1].stats["grounding"] == {"kept": 1, "dropped": 2, "recited": 1, "fallback": False}
    ev = await collect(p, AskRequest("curry", mode="summarize"))
    assert ev[-2].text.startswith("The best matches on the site: Chickpea curry. A vegetarian chickpea curry")
    assert ev[-1].stats["grounding"]["fallback"]
    raw = AskPipeline(FunctionLLM(answer(invented)), embedder, loaded, settings(ground_answers=False))
    ev = await collect(raw, AskRequest("curry", mode="generate"))
    assert ev[-2].answer == invented[TaskKind.GENERATE] and "grounding" not in ev[-1].stats


async def test_llm_rank_limit_scores_only_the_most_similar(loaded, embedder):
    llm = FunctionLLM(scores_by_name({}, default=90))
    events = await collect(AskPipeline(llm, embedder, loaded, settings(llm_rank_limit=2)), AskRequest("backpacking tent"))
    assert len([c for c in llm.calls if c[0] is TaskKind.RANK]) == 2
    assert any("Ridge 2 tent" in p for _, p in llm.calls)
    assert isinstance(events[-1], End)


async def test_calibration_centres_a_biased_model(loaded, embedder):
    """A model that says Yes with ~0.1–0.2 to everything still ranks by its preference, around 50."""
    llm = FunctionLLM(scores_by_name({"Chickpea curry": 20, "Red lentil dal": 14}, default=10))
    s = SearchSettings(llm_weight=1.0, calibrate_llm=True, min_score=0)
    pipeline = AskPipeline(llm, embedder, loaded, s)
    await collect(pipeline, AskRequest("curry", min_score=0))  # the calibration window fills up
    events = await collect(pipeline, AskRequest("curry", min_score=0))
    items = sorted((r for e in events if isinstance(e, Results) for r in e.items), key=lambda r: -r.score)
    assert items[0].item.name == "Chickpea curry" and items[0].score > 50
    assert all(r.score <= 55 for r in items if r.item.name not in ("Chickpea curry", "Red lentil dal"))


def test_admission_refuses_when_the_queue_is_full(loaded, embedder):
    llm = FunctionLLM(scores_by_name({}), max_queue=0)
    with pytest.raises(OverloadedError):
        AskPipeline(llm, embedder, loaded, settings()).admit()


@pytest.mark.parametrize("rewrite,ok", [
    ("vegan chickpea curry recipes", True),
    ("vegetarian curry recipes that are vegan", True),
    ("You asked about vegetarian curry recipes, but I'm not sure I can help", False),
    ("chickpea", False),                      # lost the follow-up's other words
    ("vegan chickpea ideas", False),          # brought in nothing from the conversation
])
def test_rewrites_are_checked_before_use(rewrite, ok):
    from nlweb_local.search.pipeline import plausible_rewrite
    assert plausible_rewrite(rewrite, "and a vegan chickpea curry?", ["vegetarian curry recipes"]) is ok


async def test_implausible_rewrite_falls_back_to_the_conversation(loaded, embedder):
    llm = FunctionLLM(lambda t, p, s: '{"decontextualized_query": "Sorry, I cannot help"}' if t is TaskKind.DECONTEXTUALIZE
                      else '{"score": 50}')
    events = await collect(AskPipeline(llm, embedder, loaded, settings()), AskRequest("only vegan ones", prev=["curry recipes"]))
    dq = next(e for e in events if isinstance(e, Decontextualized))
    assert dq.decontextualized == "curry recipes only vegan ones"


async def test_items_the_llm_did_not_read_rank_below_those_it_judged(loaded, embedder):
    """The LLM scores the two most similar items low; the unread rest must not outrank them on similarity."""
    llm = FunctionLLM(scores_by_name({}, default=20))
    p = AskPipeline(llm, embedder, loaded, settings(llm_rank_limit=2, min_score=0))
    events = await collect(p, AskRequest("backpacking tent", min_score=0, max_results=5))
    items = sorted((r for e in events if isinstance(e, Results) for r in e.items), key=lambda r: -r.score)
    read = [r for r in items if any(r.item.name in prompt for t, prompt in llm.calls if t is TaskKind.RANK)]
    unread = [r for r in items if r not in read]
    assert len(read) == 2 and unread
    assert all(u.score < min(r.score for r in read) for u in unread)
    assert [r.item.name for r in items[:2]] == [r.item.name for r in sorted(read, key=lambda r: -r.score)]


async def test_ranking_answers_are_cached_per_question_item_and_model_version(loaded, embedder):
    from nlweb_local.core.cache import BoundedCache

    cache = BoundedCache(100)
    llm = FunctionLLM(scores_by_name({"Chickpea curry": 90}, default=30))
    p = AskPipeline(llm, embedder, loaded, settings(llm_rank_limit=3), rank_cache=cache, model_version="m1")
    first = await collect(p, AskRequest("vegetarian curry"))
    ranks = lambda: len([c for c in llm.calls if c[0] is TaskKind.RANK])  # noqa: E731
    assert ranks() == 3 and first[-1].stats["cache_hits"] == 0
    again = await collect(p, AskRequest("vegetarian curry"))
    assert ranks() == 3 and again[-1].stats["cache_hits"] == 3  # no second call
    assert [r.item.url for e in again if isinstance(e, Results) for r in e.items] == \
           [r.item.url for e in first if isinstance(e, Results) for r in e.items]
    await collect(p, AskRequest("lentil dal"))  # another question: asked anew
    assert ranks() == 6
    other_model = AskPipeline(llm, embedder, loaded, settings(llm_rank_limit=3), rank_cache=cache, model_version="m2")
    await collect(other_model, AskRequest("vegetarian curry"))
    assert ranks() == 9  # another model version: asked anew
    assert len(cache) <= cache.max_entries


async def test_hybrid_sends_only_the_uncertain_band_to_the_strong_tier(loaded, embedder):
    """Quality strategy over a local and a cloud deployment: the ranking band (difficulty 1.0) goes to the
    cloud, one call per band item; the summary stays local; the rest of the candidates cost no call."""
    import random

    from nlweb_local.providers.structured import ProviderStructuredLLM
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.router.breaker import BreakerSettings, CircuitBreaker
    from nlweb_local.router.model import DeploymentInfo
    from nlweb_local.router.router import Route, Router

    local = ScriptedProvider("local", "Two good curries.", classify=True)
    cloud = ScriptedProvider("cloud", "unused", local=False, classify=True)
    router = Router([Route(DeploymentInfo("local", True), local, CircuitBreaker("local", BreakerSettings())),
                     Route(DeploymentInfo("cloud", False, price_in_per_m=2.0, price_out_per_m=8.0, tier=2), cloud,
                           CircuitBreaker("cloud", BreakerSettings()))], rng=random.Random(0), strategy="quality")
    p = AskPipeline(ProviderStructuredLLM(router), embedder, loaded, settings(llm_rank_limit=2, ground_answers=False))
    events = await collect(p, AskRequest("vegetarian curry", mode="summarize"))
    assert cloud.calls == 2 and local.calls == 1
    assert isinstance(events[-2], Summary) and events[-2].text == "Two good curries."
    assert events[-1].stats["llm_scored"] == 2 and events[-1].stats["similarity_only"] == len(ITEMS) - 2


async def test_an_answer_from_a_fallback_deployment_is_used_but_not_cached(loaded, embedder):
    import random

    from nlweb_local.core.cache import BoundedCache
    from nlweb_local.providers.structured import ProviderStructuredLLM
    from nlweb_local.providers.testing import ScriptedProvider
    from nlweb_local.router.breaker import BreakerSettings, CircuitBreaker
    from nlweb_local.router.model import DeploymentInfo
    from nlweb_local.router.router import Route, Router

    first = ScriptedProvider("first", classify=True)
    stand_in = ScriptedProvider("stand-in", local=False, classify=True)  # local-first: always second choice
    first.fail_with = ProviderConnectionError("first: down", deployment="first")
    router = Router([Route(DeploymentInfo("first", True), first, CircuitBreaker("first", BreakerSettings(min_calls=100))),
                     Route(DeploymentInfo("stand-in", False), stand_in, CircuitBreaker("stand-in", BreakerSettings()))],
                    rng=random.Random(0), backoff_s=0.0)
    cache = BoundedCache(100)
    p = AskPipeline(ProviderStructuredLLM(router), embedder, loaded, settings(llm_rank_limit=2), rank_cache=cache)
    events = await collect(p, AskRequest("vegetarian curry"))
    assert events[-1].stats["llm_scored"] == 2 and stand_in.calls == 2
    assert len(cache) == 0  # the stand-in's answers served this request only
    first.fail_with = None
    await collect(p, AskRequest("vegetarian curry"))
    assert len(cache) == 2 and stand_in.calls == 2


async def test_a_new_topic_in_a_conversation_is_not_merged_with_the_last_question(loaded, embedder):
    llm = FunctionLLM(scores_by_name({"Ridge 2 tent": 90}))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()),
                           AskRequest("a two-person backpacking tent", prev=["a quick vegetarian dinner"]))
    assert not any(t is TaskKind.DECONTEXTUALIZE for t, _ in llm.calls)  # no rewrite asked for
    rank_prompts = [p for t, p in llm.calls if t is TaskKind.RANK]
    assert rank_prompts and all("Question: a two-person backpacking tent\n" in p for p in rank_prompts)
    items = [r for e in events if isinstance(e, Results) for r in e.items]
    assert items[0].item.name == "Ridge 2 tent"


async def test_a_real_follow_up_is_still_rewritten(loaded, embedder):
    llm = FunctionLLM(lambda t, p, s: '{"decontextualized_query": "movies portraying AI as a killer machine"}'
                      if t is TaskKind.DECONTEXTUALIZE else json.dumps({"score": 50, "description": ""}))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()),
                           AskRequest("now, how about some that portray AI as a killer machine",
                                      prev=["movies with a good AI"]))
    assert llm.calls[0][0] is TaskKind.DECONTEXTUALIZE
    dq = [e for e in events if isinstance(e, Decontextualized)]
    assert dq[0].decontextualized == "movies portraying AI as a killer machine"


async def test_the_default_cut_off_shows_the_best_of_a_site_whose_items_all_score_low(loaded, embedder):
    # every item scores under the old fixed min_score 51: the default rule still shows the best ones
    llm = FunctionLLM(scores_by_name({"Chickpea curry": 45, "Red lentil dal": 38}, default=5))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()), AskRequest("vegetarian curry"))
    names = [r.item.name for e in events if isinstance(e, Results) for r in e.items]
    assert names == ["Chickpea curry", "Red lentil dal"]  # 45 and 38 are within 15 of the best; 5s are under the floor
    # a client that names min_score gets exactly that fixed cut
    events = await collect(AskPipeline(llm, embedder, loaded, settings()), AskRequest("vegetarian curry", min_score=51))
    assert any(isinstance(e, NoResults) for e in events)


async def test_nothing_is_shown_when_every_candidate_is_under_the_floor(loaded, embedder):
    llm = FunctionLLM(scores_by_name({}, default=12))
    events = await collect(AskPipeline(llm, embedder, loaded, settings()), AskRequest("waterproof jacket"))
    assert any(isinstance(e, NoResults) for e in events)

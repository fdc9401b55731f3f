"""The /ask answer cache, through the real app over real retrieval (MiniLM, embedded Qdrant with the
fixture site) and a scripted LLM: a hit after a miss, streamed and not; invalidation when a site is
ingested; personalised questions are never cached; a corrupt entry is dropped."""
import json

import httpx
import pytest_asyncio

from conftest import FIXTURE_SITE
from nlweb_local.core.types import TaskKind
from nlweb_local.ingest.pipeline import Ingestor
from nlweb_local.providers.testing import FunctionLLM, ScriptedProvider
from nlweb_local.retrieval.qdrant_store import QdrantStore
from nlweb_local.search.events import Begin, End, Results
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings

OTHER_SITE = [{"url": "https://other.example/tea", "@type": "Recipe", "name": "Iced green tea",
               "description": "Green tea over ice with mint."}]


def answer(task, prompt, schema):
    if task is TaskKind.RANK:
        return json.dumps({"score": 80, "description": "relevant"})
    if task is TaskKind.SUMMARIZE:
        return "A short summary of the recipes."
    return '{"decontextualized_query": "masala chai without ginger"}'


@pytest_asyncio.fixture(loop_scope="function")
async def ask_app(tmp_path, embedder):
    settings = service_settings(tmp_path)
    settings.search.llm_rank_limit = 5
    settings.search.llm_weight = 1.0
    settings.search.calibrate_llm = False
    store = QdrantStore(dimension=embedder.dimension, path=tmp_path / "q")
    ingestor = Ingestor(embedder, store, settings.ingest, progress=False)
    ingestor.ingest(FIXTURE_SITE, "fixture")
    llm = FunctionLLM(answer)
    comp = scripted_service(settings, {"local": ScriptedProvider("local")}, embedder=embedder, store=store, llm=llm,
                            telemetry=None)
    app = create_app(settings, comp, close_components=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client, llm, ingestor, comp, tmp_path
    await comp.close()
    store.close()


def results(body):
    return [m["content"] for m in body if m.get("message_type") == "result"]


async def test_a_repeated_question_is_answered_from_the_cache(ask_app):
    client, llm, _, comp, _ = ask_app
    params = {"query": "spicy ginger tea", "site": "fixture", "streaming": "false", "mode": "summarize"}
    first = await client.get("/ask", params=params)
    calls = len(llm.calls)
    second = await client.get("/ask", params=params)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-nlweb-cache"], second.headers["x-nlweb-cache"]) == ("miss", "hit")
    assert len(llm.calls) == calls > 0  # the hit asked the LLM nothing
    assert results(first.json()) == results(second.json()) and results(first.json())
    streamed = await client.get("/ask", params={**params, "streaming": "true"})
    assert streamed.headers["x-nlweb-cache"] == "hit" and "end-nlweb-response" in streamed.text
    # another mode or parameter is another question
    other = await client.get("/ask", params={**params, "max_results": "3"})
    assert other.headers["x-nlweb-cache"] == "miss"
    # the pipeline alone says so too (no server in between)
    from nlweb_local.search.events import AskRequest

    events = [e async for e in comp.pipeline.run(AskRequest("spicy ginger tea", ["fixture"], mode="summarize"))]
    assert isinstance(events[0], Begin) and events[0].cache == "hit"
    assert isinstance(events[-1], End) and events[-1].stats["cache"] == "hit"
    assert any(isinstance(e, Results) for e in events)


async def test_ingesting_into_a_site_invalidates_its_answers_only(ask_app):
    client, _, ingestor, _, tmp_path = ask_app
    fixture = {"query": "chickpea curry", "site": "fixture", "streaming": "false"}
    anywhere = {"query": "chickpea curry", "streaming": "false"}
    for params in (fixture, anywhere):
        assert (await client.get("/ask", params=params)).headers["x-nlweb-cache"] == "miss"
        assert (await client.get("/ask", params=params)).headers["x-nlweb-cache"] == "hit"
    source = tmp_path / "other.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in OTHER_SITE))
    ingestor.ingest(str(source), "other")
    assert (await client.get("/ask", params=fixture)).headers["x-nlweb-cache"] == "hit"  # another site
    assert (await client.get("/ask", params=anywhere)).headers["x-nlweb-cache"] == "miss"  # all sites: changed
    ingestor.ingest(FIXTURE_SITE, "fixture")  # the same items again: a new generation all the same
    assert (await client.get("/ask", params=fixture)).headers["x-nlweb-cache"] == "miss"
    assert (await client.get("/ask", params=fixture)).headers["x-nlweb-cache"] == "hit"
    ingestor.delete_site("fixture")
    gone = await client.get("/ask", params=fixture)
    assert gone.headers["x-nlweb-cache"] == "miss" and not results(gone.json())


async def test_a_question_with_history_is_never_cached(ask_app):
    client, _, _, _, _ = ask_app
    params = {"query": "without ginger?", "prev": "masala chai", "site": "fixture", "streaming": "false"}
    for _ in range(2):
        r = await client.get("/ask", params=params)
        assert r.status_code == 200 and "x-nlweb-cache" not in r.headers


async def test_a_corrupt_answer_is_dropped_and_counted(ask_app):
    client, _, _, comp, _ = ask_app
    params = {"query": "lentil soup", "site": "fixture", "streaming": "false"}
    await client.get("/ask", params=params)
    cache = comp.pipeline._answers
    store = cache._store
    for key in list(store._data):
        await store.set(key, {"v": 1, "ts": 0, "c": 0, "r": 0, "ev": [["B", "lentil soup"], ["R", [["no"]]], ["E", {}]]})
    r = await client.get("/ask", params=params)
    assert r.headers["x-nlweb-cache"] == "miss" and results(r.json())
    assert cache.corrupt == 1
    assert (await client.get("/ask", params=params)).headers["x-nlweb-cache"] == "hit"


async def test_a_semantic_index_plugs_into_the_answer_cache():
    """The semantic index is another part's; a stand-in that knows one paraphrase shows the seam."""
    from nlweb_local.core.cache import BoundedCache
    from nlweb_local.core.types import Item
    from nlweb_local.search.answer_cache import AnswerCache
    from nlweb_local.search.events import AskRequest, RankedItem

    class Paraphrases:
        def __init__(self):
            self.keys = {}

        async def lookup(self, namespace, text):
            key = self.keys.get((namespace, text.replace("meatless", "vegetarian")))
            return (key, 0.91) if key else None

        async def add(self, namespace, text, key):
            self.keys[(namespace, text)] = key

    version = ["v1"]
    cache = AnswerCache(BoundedCache(10), lambda sites: version[0], semantic=Paraphrases())
    item = RankedItem(Item("https://x/1", "Dal", "s", "{}"), 80, "lentils", 0.5)
    answer = [Begin("vegetarian dinner", cache="miss"), Results([item]), End(stats={"seconds": 1.0})]
    k = await cache.key(AskRequest("vegetarian dinner", ["s"]))
    assert await cache.find(k) is None
    await cache.keep(k, answer, (0.0, 0.0))
    events = (await cache.find(await cache.key(AskRequest("meatless dinner", ["s"])))).value
    assert events[0].cache == "semantic-hit; similarity=0.91" and events[1].items[0].item.name == "Dal"
    assert await cache.find(await cache.key(AskRequest("meatless dinner", ["s"], mode="summarize"))) is None
    version[0] = "v2"  # an ingest: the namespace moves on with the index version
    assert await cache.find(await cache.key(AskRequest("meatless dinner", ["s"]))) is None

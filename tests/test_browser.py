"""The chat page at `/`, driven in headless Chromium.

* `test_chat_page_renders_stream` (fast): the page's files are served straight from the source tree and
  /sites and /ask are answered with canned, protocol-exact v3 streams, so rendering, escaping, sorting,
  citations, errors and the SSE parser are checked deterministically without a model.
* `test_chat_against_live_server` (slow): the real nlweb-local with the real local LLM (`live_server`).
  List, follow-up (prev), summarize and generate; it saves test-artifacts/chat.png (plus chat-summary.png,
  chat-phone.png and chat-generate.png) to look at.
"""
from __future__ import annotations

import base64
import json
import re
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("playwright.sync_api")  # part of the [test] extra
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from browser_util import STATIC_DIR, PageWatch, launch_chromium, screenshot, sse  # noqa: E402

pytestmark = pytest.mark.browser

ANSWER_TIMEOUT_MS = 90_000
SENDER = {"id": "nlweb_assistant", "name": "NLWeb Assistant"}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture()
def context(browser):
    ctx = browser.new_context(locale="en-US", timezone_id="UTC", viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def wait_turn_finished(page, n: int, timeout: int = ANSWER_TIMEOUT_MS):
    """Wait until the n-th turn (1-based) is no longer streaming; returns its locator."""
    turn = page.locator("#turns > li.turn").nth(n - 1)
    expect(turn).to_have_attribute("data-state", re.compile(r"^(done|error|aborted)$"), timeout=timeout)
    return turn


def ask(page, query: str, mode: str | None = None):
    if mode:
        page.locator(f'input[name="mode"][value="{mode}"]').check()
    box = page.get_by_label("Your question")
    expect(box).to_be_enabled(timeout=ANSWER_TIMEOUT_MS)
    box.fill(query)
    box.press("Enter")


# ---------------------------------------------------------------------------------------------- canned


def _msg(message_type: str, **fields) -> dict:
    return {"message_id": "m1", "timestamp": 1762400000000, "conversation_id": "c", "sender_info": SENDER,
            "message_type": message_type, **fields}


def _item(slug: str, name: str, score: int, schema: dict, description: str = "It fits.") -> dict:
    url = f"https://fixture.example/{slug}"
    return {"@type": "Item", "url": url, "name": name, "site": "fixture", "siteUrl": "fixture", "score": score,
            "description": description, "schema_object": {"url": url, "name": name, **schema}}


CURRY = _item("recipes/thai-green-curry", "Thai Green Curry", 71,
              {"@type": "Recipe", "totalTime": "PT40M", "recipeCuisine": "Thai",
               "suitableForDiet": "https://schema.org/VegetarianDiet"})
CHANA = _item("recipes/chana-masala", "Weeknight Chana Masala", 88,
              {"@type": "Recipe", "totalTime": "PT1H5M", "recipeCuisine": "Indian",
               "image": "https://fixture.example/img/chana.gif"},
              description="Vegan chickpea curry <img src=x onerror=window.__pwned=1>")
TENT = _item("gear/ridgeline-2p", "Ridgeline 2P Tent", 93,
             {"@type": "Product", "brand": {"@type": "Brand", "name": "Summitcraft"},
              "offers": {"@type": "Offer", "price": "349.00", "priceCurrency": "USD",
                         "availability": "https://schema.org/InStock"}})
CLASS = _item("events/curry-night", "Spicy Curry Night <b>Class</b>", 64,
              {"@type": "Event", "startDate": "2026-07-09T18:30",
               "location": {"@type": "Place", "name": "Riverside Culinary Studio",
                            "address": {"@type": "PostalAddress", "addressLocality": "Fixtureville"}}})
EVIL = {**_item("x", "Evil link", 55, {"@type": "Thing"}), "url": "javascript:window.__pwned=2"}


def canned_stream(query: str, mode: str, prev: list[str]) -> tuple[int, str, str]:
    begin = {"message_type": "begin-nlweb-response", "conversation_id": "c", "query": query, "timestamp": 1}
    end = {"message_type": "end-nlweb-response", "conversation_id": "c", "timestamp": 2}
    if query == "http 500":
        return 500, "application/json", json.dumps({"error": "database is down"})
    if query == "boom":
        return 200, "text/event-stream", sse(begin, _msg("error", error="model crashed <script>x</script>", status=500),
                                             {**end, "error": True})
    if query == "nothing":
        return 200, "text/event-stream", sse(begin, _msg("no_results", message="No results found."), end)
    if query == "llm down":  # what the server sends when the LLM could not rank
        return 200, "text/event-stream", sse(begin, _msg("intermediate_message", message=DEGRADED),
                                             _msg("result", sender_type="assistant", content=[TENT]),
                                             {**end, "degraded": True})
    msgs: list = [begin, ": keepalive\n\n"]
    if prev:
        msgs.append(_msg("decontextualized_query", decontextualized_query=f"{query} ({prev[-1]})",
                         original_query=query))
    msgs.append(_msg("intermediate_message", message="Ranking 24 candidates"))
    # two result messages, the better items in the second one: the page must keep cards sorted
    msgs.append(_msg("result", sender_type="assistant", content=[CURRY, CLASS, EVIL]))
    msgs.append(_msg("result", sender_type="assistant", content=[TENT, CHANA]))
    if mode == "summarize":
        msgs.append(_msg("result", sender_type="assistant", content="Two curries **stand out**.",
                         **{"@type": "Summary"}))
    if mode == "generate":
        msgs.append(_msg("nlws", sender_type="assistant",
                         answer=f"Try the chana masala ({CHANA['url']}).\n\nOr the green curry [{CURRY['url']}].",
                         items=[CHANA, CURRY], **{"@type": "GeneratedAnswer"}))
    msgs.append(_msg("remember", message="I will remember that you like curry"))
    msgs.append(end)
    # CRLF line endings for one message, to exercise the parser in a real browser too
    body = sse(*msgs).replace("\n\n", "\r\n\r\n", 1)
    return 200, "text/event-stream; charset=utf-8", body


DEGRADED = "The language model is unavailable (NoDeploymentError); some results are ordered by similarity only."
GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")


def install_canned_server(page):
    def handle(route):
        u = urlparse(route.request.url)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/":
            return route.fulfill(path=str(STATIC_DIR / "index.html"), content_type="text/html; charset=utf-8")
        if u.path.startswith("/static/"):
            f = STATIC_DIR / u.path[len("/static/"):]
            ctype = {".js": "text/javascript", ".css": "text/css"}.get(f.suffix, "application/octet-stream")
            return route.fulfill(path=str(f), content_type=ctype) if f.is_file() else route.fulfill(status=404)
        if u.path == "/sites":
            return route.fulfill(json={"message-type": "sites", "sites": ["fixture", "other"]})
        if u.path == "/ask":
            status, ctype, body = canned_stream(q.get("query", ""), q.get("generate_mode", "list"),
                                                json.loads(q.get("prev") or "[]"))
            return route.fulfill(status=status, content_type=ctype, body=body)
        return route.fulfill(status=404, body="not found")

    page.route("http://nlweb.test/**", handle)
    page.route("https://fixture.example/img/**", lambda route: route.fulfill(body=GIF, content_type="image/gif"))


def test_chat_page_renders_stream(context):
    page = context.new_page()
    watch = PageWatch().attach(page)
    install_canned_server(page)
    page.goto("http://nlweb.test/")

    expect(page.locator("#site option[value=fixture]")).to_have_count(1)
    page.get_by_label("Site to search").select_option("fixture")

    # --- the SSE parser copes with any chunking and line ending
    events = page.evaluate("""() => {
        const stream = 'data: {"a":1}\\r\\n\\r\\n: keepalive\\n\\ndata: {"b":\\n' +
                       'data: 2}\\r\\rdata:{"c":3}\\n\\nevent: x\\ndata: {"d":4}';
        const run = (size) => {
            const out = [];
            const p = window.NLWebChat.createSSEParser((d) => out.push(JSON.parse(d)));
            for (let i = 0; i < stream.length; i += size) p.push(stream.slice(i, i + size));
            p.end();
            return JSON.stringify(out);
        };
        return [1, 2, 3, 7, 1000].map(run);
    }""")
    assert set(events) == {json.dumps([{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}]).replace(" ", "")}

    # --- list mode: cards sorted by score, escaped, with facts
    ask(page, "vegetarian curry", "list")
    turn = wait_turn_finished(page, 1)
    assert turn.get_attribute("data-state") == "done"
    cards = turn.locator(".result-card")
    expect(cards).to_have_count(5)
    scores = [int(s) for s in cards.locator(".score-badge").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) == [93, 88, 71, 64, 55]
    first = cards.nth(0)
    expect(first.locator("a.result-title")).to_have_attribute("href", TENT["url"])
    expect(first.locator(".facts")).to_contain_text("Summitcraft")
    expect(first.locator(".facts")).to_contain_text("$349.00")
    expect(first.locator(".facts")).to_contain_text("In stock")
    chana = cards.nth(1)
    expect(chana.locator(".card-why")).to_have_text("Vegan chickpea curry <img src=x onerror=window.__pwned=1>")
    expect(chana.locator(".facts")).to_contain_text("1 h 5 min")
    expect(chana.locator(".card-media img")).to_have_count(1)  # plain-URL image shown
    expect(cards.nth(2).locator(".facts")).to_contain_text("Vegetarian")
    event = cards.nth(3)
    expect(event.locator("a.result-title")).to_have_text("Spicy Curry Night <b>Class</b>")
    expect(event.locator(".facts")).to_contain_text("Riverside Culinary Studio, Fixtureville")
    expect(event.locator(".facts")).to_contain_text("Jul 9, 2026")
    expect(cards.nth(4).locator("a")).to_have_count(0)  # javascript: URL is not made a link
    assert page.evaluate("window.__pwned") is None
    expect(turn.locator(".notice")).to_contain_text("I will remember that you like curry")
    expect(turn.locator(".notice")).to_have_count(1)  # progress ("Ranking 24 candidates") is not kept
    expect(turn.locator(".turn-footer")).to_contain_text(re.compile(r"5 results · Answered in \d+\.\d s"))
    expect(turn.locator(".decontext")).to_be_hidden()
    assert watch.ask_params(0)["site"] == "fixture"
    assert watch.ask_prev(0) == []

    # --- follow-up: prev carries the first query; decontextualised query shown; summary rendered
    ask(page, "only vegan", "summarize")
    turn = wait_turn_finished(page, 2)
    assert watch.ask_prev(1) == ["vegetarian curry"]
    assert watch.ask_params(1)["conversation_id"] == watch.ask_params(0)["conversation_id"]
    assert watch.ask_params(1)["generate_mode"] == "summarize"
    expect(turn.locator(".decontext")).to_have_text("Searching for: only vegan (vegetarian curry)")
    expect(turn.locator(".summary-block")).to_contain_text("Two curries stand out.")
    expect(turn.locator(".summary-block strong")).to_have_text("stand out")

    # --- generate: answer with numbered citations linking to the items
    ask(page, "what should I cook", "generate")
    turn = wait_turn_finished(page, 3)
    answer = turn.locator(".answer-block")
    expect(answer.locator(".block-body p")).to_have_text(["Try the chana masala[1].", "Or the green curry[2]."])
    expect(answer.locator("a.cite-link")).to_have_count(2)
    expect(answer.locator("a.cite-link").nth(0)).to_have_text("[1]")
    expect(answer.locator("a.cite-link").nth(0)).to_have_attribute("href", CHANA["url"])
    expect(answer.locator("a.cite-link").nth(1)).to_have_attribute("href", CURRY["url"])
    expect(answer.locator(".sources a.source-link")).to_have_count(2)
    assert watch.ask_prev(2) == ["vegetarian curry", "only vegan"]

    # --- error message in the stream, then HTTP failure, then no results
    ask(page, "boom", "list")
    turn = wait_turn_finished(page, 4)
    assert turn.get_attribute("data-state") == "error"
    expect(turn.locator(".error-line")).to_contain_text("model crashed <script>x</script>")
    ask(page, "http 500")
    turn = wait_turn_finished(page, 5)
    expect(turn.locator(".error-line")).to_contain_text("500: database is down")
    ask(page, "nothing")
    turn = wait_turn_finished(page, 6)
    expect(turn.locator(".empty-state")).to_contain_text("No matching results")
    expect(page.get_by_label("Your question")).to_be_enabled()

    # --- an answer ranked by similarity only keeps saying so after it ends
    ask(page, "llm down")
    turn = wait_turn_finished(page, 7)
    assert turn.get_attribute("data-state") == "done"
    expect(turn.locator(".result-card")).to_have_count(1)
    expect(turn.locator(".notice-warn")).to_have_text(DEGRADED)

    # --- new conversation clears the chat and the history
    cid = watch.ask_params(0)["conversation_id"]
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#turns > li")).to_have_count(0)
    ask(page, "tents")
    wait_turn_finished(page, 1)
    assert watch.ask_prev() == []
    assert watch.ask_params()["conversation_id"] != cid

    # The failed HTTP request above logs "Failed to load resource: 500"; nothing else may.
    unexpected = [e for e in watch.errors if "status of 500" not in e]
    assert not unexpected, unexpected


# ---------------------------------------------------------------------------------------------- live


@pytest.mark.slow
def test_chat_against_live_server(context, live_server):
    page = context.new_page()
    watch = PageWatch().attach(page)
    page.goto(live_server.url + "/")

    site = page.get_by_label("Site to search")
    expect(site.locator("option[value=fixture]")).to_have_count(1, timeout=30_000)
    site.select_option("fixture")

    # first question, list mode
    ask(page, "vegetarian curry recipes", "list")
    turn = wait_turn_finished(page, 1)
    assert turn.get_attribute("data-state") == "done", turn.inner_text()
    cards = turn.locator(".result-card")
    assert cards.count() >= 1, turn.inner_text()
    href = cards.first.locator("a.result-title").get_attribute("href")
    assert href and href.startswith("https://fixture.example/"), href
    assert re.fullmatch(r"\d{1,3}", cards.first.locator(".score-badge").inner_text().strip())
    expect(turn.locator(".turn-footer")).to_contain_text("Answered in")
    first = watch.ask_params(0)
    assert first["query"] == "vegetarian curry recipes"
    assert first["site"] == "fixture" and first["generate_mode"] == "list"
    assert watch.ask_prev(0) == []

    # follow-up in the same conversation: prev carries the first query. (Worded so that it still finds
    # results when the small local model decontextualises it poorly.)
    ask(page, "and a vegan chickpea curry?")
    turn = wait_turn_finished(page, 2)
    assert watch.ask_prev(1) == ["vegetarian curry recipes"]
    assert watch.ask_params(1)["conversation_id"] == first["conversation_id"]
    assert turn.get_attribute("data-state") == "done", turn.inner_text()
    assert turn.locator(".result-card").count() >= 1, turn.inner_text()
    screenshot(page, "chat.png")

    # new conversation, summarize mode
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#turns > li")).to_have_count(0)
    ask(page, "vegetarian curry recipes", "summarize")
    turn = wait_turn_finished(page, 1)
    assert watch.ask_prev(2) == []
    assert watch.ask_params(2)["generate_mode"] == "summarize"
    assert watch.ask_params(2)["conversation_id"] != first["conversation_id"]
    assert turn.get_attribute("data-state") == "done", turn.inner_text()
    summary = turn.locator(".summary-block .block-body")
    expect(summary).to_be_visible()
    assert len(summary.inner_text().strip()) > 10
    screenshot(page, "chat-summary.png")

    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "chat-phone.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    # generate mode: the answer with its numbered sources
    page.get_by_role("button", name="New conversation").click()
    ask(page, "vegetarian curry recipes", "generate")
    turn = wait_turn_finished(page, 1)
    assert turn.get_attribute("data-state") == "done", turn.inner_text()
    answer = turn.locator(".answer-block")
    expect(answer).to_be_visible()
    assert answer.locator(".block-body").inner_text().strip()
    sources = answer.locator(".sources a.source-link")
    assert sources.count() >= 1
    assert all(h.startswith("https://fixture.example/") for h in
               (sources.nth(i).get_attribute("href") for i in range(sources.count())))
    screenshot(page, "chat-generate.png")

    assert not watch.errors, watch.errors

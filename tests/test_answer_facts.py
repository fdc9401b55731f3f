"""The fact extractor and checker behind the grounding pass and `eval answers` (search/facts.py, grounding.py)."""
from __future__ import annotations

import pytest

from nlweb_local.search.facts import Source, extract_facts, supported
from nlweb_local.search.grounding import Evidence, check_answer, extractive, ground

CHAI = {"@type": "Recipe", "name": "Gentle Cardamom Chai (No Ginger)", "totalTime": "PT25M",
        "author": {"@type": "Person", "name": "Priya Raman"}, "recipeYield": "2 cups",
        "nutrition": {"@type": "NutritionInformation", "calories": "90 calories"},
        "aggregateRating": {"@type": "AggregateRating", "ratingValue": 4.8, "ratingCount": 61},
        "description": "A soft, floral chai built on cardamom, with no ginger at all."}
TENT = {"@type": "Product", "name": "Ridgeline 2P Backpacking Tent", "brand": {"@type": "Brand", "name": "Summitcraft"},
        "offers": {"@type": "Offer", "price": "349.00", "priceCurrency": "USD"}}
FAIR = {"@type": "FoodEvent", "name": "Harlow Ridge Chili Cook-Off", "startDate": "2026-10-17T11:00",
        "endDate": "2026-10-17T15:00", "location": {"@type": "Place", "name": "Cedar Valley Fairgrounds"},
        "offers": {"@type": "Offer", "price": "0", "priceCurrency": "USD"}}
PODCAST = {"@type": "PodcastEpisode", "name": "Breaking down the beef", "datePublished": "Fri, 17 May 2024 12:31:14 -0400",
           "description": "<p>Drake and Kendrick Lamar have been lobbing diss tracks&#8217; back and forth.</p>"}


def kinds(text: str) -> list[tuple[str, object]]:
    return [(f.kind, f.value) for f in extract_facts(text)]


@pytest.mark.parametrize("text, kind, value", [
    ("It takes 25 min.", "duration", 25.0),
    ("It takes PT25M.", "duration", 25.0),
    ("Ready in 1 hour 30 minutes.", "duration", 90.0),
    ("Ready in 1 h 30 min.", "duration", 90.0),
    ("Ready in half an hour.", "duration", 30.0),
    ("It costs $12.50.", "price", 12.5),
    ("It costs 349 USD.", "price", 349.0),
    ("Entry is free.", "price", 0.0),
    ("Doors open at 7:30 pm.", "time", 19 * 60 + 30),
    ("Doors open at 19:30.", "time", 19 * 60 + 30),
    ("It is on October 17, 2026.", "date", (2026, 10, 17)),
    ("It is on 17 October.", "date", (None, 10, 17)),
    ("It was published on 2024-05-17.", "date", (2024, 5, 17)),
    ("Come in March.", "month", (None, 3)),
    ("It runs every Saturday.", "weekday", 5),
    ("It came out in 2014.", "year", 2014),
    ("Add 3 cups of water.", "number", (3.0, "cup")),
    ("Add 1 1/2 cups of milk.", "number", (1.5, "cup")),
    ("It is rated 4.8 stars.", "number", (4.8, "star")),
])
def test_extracts_each_kind_with_its_value(text, kind, value):
    assert (kind, value) in kinds(text)


def test_a_price_or_duration_is_not_also_read_as_a_bare_number():
    facts = kinds("It costs $12.50 and takes 25 minutes.")
    assert ("price", 12.5) in facts and ("duration", 25.0) in facts
    assert not [v for k, v in facts if k == "number"]


def test_proper_names_and_not_ordinary_capitalised_words():
    names = [f.text for f in extract_facts("Try the Grange Hall Masala Chai by Priya Raman. This is warm. "
                                           "Enjoy it in October.") if f.kind == "name"]
    assert names == ["Grange Hall Masala Chai", "Priya Raman"]


def test_words_inside_other_words_are_not_facts():
    assert not [k for k, _ in kinds("A gluten-free cake. Feel free to ask.") if k == "price"]
    assert kinds("") == []


def test_an_items_source_backs_facts_by_value_not_spelling():
    src = Source.of(FAIR)
    ok = ["It is on October 17 at 11 am.", "It lasts 4 hours.", "Entry is free.", "It is at Cedar Valley Fairgrounds.",
          "It falls on a Saturday in October 2026."]
    for text in ok:
        assert all(src.states(f) for f in extract_facts(text)), text
    for wrong in ["It is on October 18.", "It starts at 10 am.", "It costs $5.", "It is at Millbrook Grange Hall.",
                  "It lasts 3 hours.", "It is on a Sunday."]:
        assert not all(src.states(f) for f in extract_facts(wrong)), wrong


def test_durations_prices_and_ratings_of_a_recipe_and_a_product():
    chai, tent = Source.of(CHAI), Source.of(TENT)
    assert all(chai.states(f) for f in extract_facts("It takes 25 minutes, makes 2 cups and is rated 4.8/5 by 61 cooks."))
    assert not any(chai.states(f) for f in extract_facts("It takes 35 minutes."))
    assert all(tent.states(f) for f in extract_facts("The Ridgeline 2P costs $349 from Summitcraft."))
    assert not any(tent.states(f) for f in extract_facts("It costs $399."))


def test_html_in_items_and_rfc_dates_are_read():
    src = Source.of(PODCAST)
    assert all(supported(f, [src]) for f in extract_facts("Kendrick Lamar and Drake, published May 17, 2024."))
    assert not any(supported(f, [src]) for f in extract_facts("Published May 18, 2024 with Nicki Minaj."))


def test_the_question_counts_as_a_source():
    ev = Evidence([CHAI], "chai that takes 10 minutes")
    assert check_answer("A chai that takes 10 minutes.", ev).unsupported == []
    assert [f.text for f in check_answer("A chai that takes 12 minutes.", ev).unsupported] == ["12 minutes"]


def test_citations_must_point_at_an_item_that_states_the_sentence():
    ev = Evidence([CHAI, TENT], "chai")
    good = check_answer("The Gentle Cardamom Chai takes 25 minutes [1].", ev)
    assert good.citations == 1 and good.bad_citations == 0 and not good.unsupported
    wrong_item = check_answer("The Gentle Cardamom Chai takes 25 minutes [2].", ev)
    assert wrong_item.bad_citations == 1 and len(wrong_item.unsupported) == 2  # checked against the cited item only
    out_of_range = check_answer("It is floral [7].", ev)
    assert out_of_range.bad_citations == 1


def test_a_restating_answer_is_flagged_and_an_informative_one_is_not():
    ev = Evidence([CHAI, TENT], "a chai recipe without ginger")
    assert check_answer("Here are some chai recipes without ginger.", ev).restates
    assert not check_answer("The Gentle Cardamom Chai is floral, built on cardamom [1].", ev).restates


def test_grounding_removes_unsupported_sentences_and_recites():
    ev = Evidence([TENT, CHAI], "a chai without ginger")
    text = ("You asked for a chai without ginger. The Gentle Cardamom Chai takes 25 minutes [1]. "
            "It was created by Julia Child in 1961 [2]. It is built on cardamom [2].")
    out = ground(text, ev, cite=True)
    assert not out.fallback and out.dropped == 2
    assert out.text == "The Gentle Cardamom Chai takes 25 minutes [2]. It is built on cardamom [2]."
    check = check_answer(out.text, ev)
    assert check.unsupported == [] and check.bad_citations == 0 and not check.restates
    assert "[" not in ground(text, ev, cite=False).text


def test_grounding_falls_back_to_the_items_own_facts_and_they_check():
    ev = Evidence([CHAI, TENT, FAIR], "something for the weekend")
    out = ground("Something for the weekend? Try the Moonbeam Lantern for $20.", ev, cite=True)
    assert out.fallback
    assert out.text.startswith("Gentle Cardamom Chai (No Ginger) [1]: ready in 25 min")
    check = check_answer(out.text, ev)
    assert check.facts >= 6 and check.unsupported == [] and check.bad_citations == 0 and not check.restates
    assert extractive(Evidence([], "x"), cite=True) == ""


def test_grounded_lines_without_stops_are_checked_as_they_were_grounded():
    """A model's lines without full stops are kept as separate sentences; joined again, the checker must
    split them where the pass did (else a name runs across two of them)."""
    ev = Evidence([CHAI, TENT], "chai or a tent")
    text = "Gentle Cardamom Chai (No Ginger): by Priya Raman\n[2] Ridgeline 2P Backpacking Tent: 349 USD"
    out = ground(text, ev, cite=True)
    assert out.text == ("Gentle Cardamom Chai (No Ginger): by Priya Raman [1]. "
                        "Ridgeline 2P Backpacking Tent: 349 USD [2].")
    check = check_answer(out.text, ev)
    assert check.unsupported == [] and check.bad_citations == 0


def test_a_sentence_that_is_only_an_item_s_name_is_dropped_and_names_alone_fall_back_to_the_items_facts():
    ev = Evidence([CHAI, TENT], "a chai without ginger")
    kept = ground("Gentle Cardamom Chai. It is a soft, floral chai built on cardamom.", ev, cite=False)
    assert kept.text == "It is a soft, floral chai built on cardamom." and kept.dropped == 1 and not kept.fallback
    names_only = ground("Gentle Cardamom Chai (No Ginger). Ridgeline 2P Backpacking Tent.", ev, cite=False)
    assert names_only.fallback and names_only.dropped == 2
    assert "ready in 25 min" in names_only.text and "cardamom" in names_only.text  # the items' own facts instead

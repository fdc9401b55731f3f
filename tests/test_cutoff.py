"""The cut-off rule: a client's min_score is fixed; otherwise relative to the question's best, above a floor."""
from nlweb_local.search.cutoff import Cutoff


def keep(scores, **kw):
    return Cutoff(margin=15, floor=20, sure=51).keep(scores, lambda s: s, **kw)


def test_a_site_whose_items_all_score_low_still_shows_its_best():
    assert keep([48, 44, 35, 33, 20]) == [48, 44, 35, 33]


def test_a_site_whose_items_score_high_keeps_everything_above_min_score():
    assert keep([90, 70, 55, 52, 51, 40]) == [90, 70, 55, 52]


def test_nothing_at_or_under_the_floor_is_shown():
    assert keep([20, 18, 10]) == []
    assert keep([28, 21, 20]) == [28, 21]


def test_an_explicit_min_score_is_a_fixed_cut():
    assert keep([48, 44, 35], min_score=51) == []
    assert keep([48, 44, 35], min_score=0) == [48, 44, 35]
    assert keep([90, 70, 55], min_score=60) == [90, 70]


def test_no_margin_is_the_fixed_cut():
    assert Cutoff(margin=None, floor=20, sure=51).keep([48, 60], lambda s: s) == [60]


def test_empty():
    assert keep([]) == []


def test_an_item_under_min_score_must_also_be_similar_enough_on_its_own():
    # (score, similarity score): the best of an unanswerable question, lifted by a small model's vote
    items = [(34, 12), (30, 25), (22, 21)]
    kept = Cutoff(margin=15, floor=20, sure=51).keep(items, lambda i: i[0], similarity_of=lambda i: i[1])
    assert kept == [(30, 25), (22, 21)]
    # an item above min_score is shown whatever its similarity (it may have been streamed already)
    assert Cutoff().keep([(80, 5)], lambda i: i[0], similarity_of=lambda i: i[1]) == [(80, 5)]

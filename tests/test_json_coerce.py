import pytest

from nlweb_local.core.json_coerce import coerce_to_schema, extract_object
from nlweb_local.search.prompts import RANK_SCHEMA


@pytest.mark.parametrize("text,score,desc", [
    ('{"score": 82, "description": "fits"}', 82, "fits"),
    ('```json\n{"score": "82", "description": "fits"}\n```', 82, "fits"),
    ('Sure! {"score": "82/100", "description": "fits"} Hope this helps.', 82, "fits"),
    ('{"score": 82.6, "description": 7}', 83, "7"),
    ('{"score": 140, "description": "x"}', 100, "x"),
    ('{"score": 55, "description": "cut off mid-sent', 55, "cut off mid-sent"),
    ('{"score": 55, "description": "ends with escape\\', 55, "ends with escape"),
])
def test_rank_answers_are_coerced(text, score, desc):
    out = coerce_to_schema(text, RANK_SCHEMA)
    assert out == {"score": score, "description": desc}


@pytest.mark.parametrize("text", ["no json here", '{"description": "no score"}', '{"score": "high", "description": "x"}', "[1, 2]"])
def test_unrepairable_answers_raise(text):
    with pytest.raises(ValueError):
        coerce_to_schema(text, RANK_SCHEMA)


def test_booleans_from_strings():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    assert coerce_to_schema('{"ok": "True"}', schema) == {"ok": True}
    assert coerce_to_schema('{"ok": "no"}', schema) == {"ok": False}


def test_trailing_comma_and_nested_braces():
    assert extract_object('{"a": {"b": 1},}') == {"a": {"b": 1}}
    assert extract_object('{"a": "x}y", "b": 2}') == {"a": "x}y", "b": 2}

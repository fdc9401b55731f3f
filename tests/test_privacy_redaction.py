"""privacy.redact: e-mail addresses, phone numbers, card numbers (Luhn), IBANs (mod 97) and configured patterns
become placeholders before a cloud call, come back where the answer echoes them (streamed or not), and are
counted; a local deployment sees the text as it is."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from nlweb_local.core.types import CallContext, ChatRequest, Message
from nlweb_local.governance import redaction
from nlweb_local.governance.redacting import RedactingProvider
from nlweb_local.governance.redaction import Detector, Redaction, StreamRestorer, iban_valid, luhn_valid
from nlweb_local.providers.testing import ScriptedProvider
from stand_ins import scripted_service, service_settings

TEXT = ("Write to ana.lopez@example.org or call +44 20 7946 0958; card 4111 1111 1111 1111, "
        "IBAN GB82 WEST 1234 5698 7654 32, staff id EMP-123456.")


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33") and not iban_valid("DE8937040044053201300")


def test_every_kind_is_found_and_replaced_once_per_value():
    r = Redaction(Detector(patterns={"STAFF": r"EMP-\d{6}"}))
    out = r.redact(TEXT + " Again: ana.lopez@example.org")
    assert out == ("Write to [EMAIL_1] or call [PHONE_1]; card [CARD_1], IBAN [IBAN_1], staff id [STAFF_1]. "
                   "Again: [EMAIL_1]")
    assert r.restore(out) == TEXT + " Again: ana.lopez@example.org"
    assert r.counts() == {"EMAIL": 1, "PHONE": 1, "CARD": 1, "IBAN": 1, "STAFF": 1}


@pytest.mark.parametrize("text", ["order 4111 1111 1111 1112 shipped", "on 2024-05-01 at 10:30", "ticket 12345678",
                                  "GB82 WEST 1234 5698 7654 33", "version 1.2.3.4", "no personal data here"])
def test_lookalikes_are_left_alone(text):
    assert Redaction(Detector()).redact(text) == text


def test_phones_without_the_library_use_the_strict_pattern(monkeypatch):
    monkeypatch.setattr(redaction, "phone_finder", lambda region: redaction._phones_by_pattern)
    r = Redaction(Detector(["phone"]))
    assert r.redact("ring (415) 555-2671 or +49 30 901820, not 20240501") == \
        "ring [PHONE_1] or [PHONE_2], not 20240501"


def test_phones_with_phonenumbers_follow_the_region():
    pytest.importorskip("phonenumbers")
    text = "ring 020 7946 0958 today"
    assert Redaction(Detector(["phone"])).redact(text) == text  # not a US number
    assert Redaction(Detector(["phone"], phone_region="GB")).redact(text) == "ring [PHONE_1] today"


@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=12))
def test_a_placeholder_split_anywhere_in_a_stream_is_restored(cuts):
    r = Redaction(Detector())
    r.redact("mail ana@example.org")
    answer = "Sure: [EMAIL_1] is the address; [NOT_9] stays; [EMAIL_1]."
    pieces, at = [], 0
    for c in cuts:
        pieces.append(answer[at:at + c])
        at += c
    pieces.append(answer[at:])
    s = StreamRestorer(r)
    assert "".join(s.feed(p) for p in pieces) + s.flush() == r.restore(answer)
    assert r.restore(answer) == "Sure: ana@example.org is the address; [NOT_9] stays; ana@example.org."


class Echo(ScriptedProvider):
    """Answers with the prompt it was sent (so the test sees what left, and what came back)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[str] = []

    async def stream(self, request):
        self.seen.append(request.messages[-1].content)
        self.text = "You said: " + request.messages[-1].content
        async for ch in super().stream(request):
            yield ch


async def test_the_wrapper_redacts_out_and_restores_back_streamed_and_not():
    inner = Echo("cloud", local=False)
    counted: dict[str, int] = {}
    p = RedactingProvider(inner, Detector(), on_redact=lambda k, n: counted.__setitem__(k, counted.get(k, 0) + n))
    req = ChatRequest([Message("user", "my mail is ana@example.org and card 4111 1111 1111 1111")])
    out = await p.complete(req)
    assert inner.seen[-1] == "my mail is [EMAIL_1] and card [CARD_1]"
    assert out.content == "You said: my mail is ana@example.org and card 4111 1111 1111 1111"
    assert req.messages[-1].content.startswith("my mail is ana@")  # the caller's request is left as it was
    streamed = "".join([ch.delta async for ch in p.stream(req)])
    assert streamed == out.content and inner.seen[-1] == "my mail is [EMAIL_1] and card [CARD_1]"
    assert counted == {"email": 2, "card": 2}


async def test_only_cloud_deployments_are_redacted_and_the_metric_counts(tmp_path):
    from nlweb_local.telemetry import build_telemetry

    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4o-mini"})
    settings.privacy.redact = True
    settings.cache.enabled = False
    settings.llm.rounds = 1
    local, cloud = Echo("local"), Echo("cloud", local=False)
    telemetry = build_telemetry(settings)
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, telemetry=telemetry, audit=None)
    try:
        out = await comp.gateway.complete(ChatRequest([Message("user", "reach me at ana@example.org")],
                                                      context=CallContext(deployments=("cloud",))))
        assert cloud.seen == ["reach me at [EMAIL_1]"] and out.content == "You said: reach me at ana@example.org"
        await comp.gateway.complete(ChatRequest([Message("user", "reach me at ana@example.org")],
                                                context=CallContext(deployments=("local",))))
        assert local.seen == ["reach me at ana@example.org"]
        assert b'nlweb_redactions_total{kind="email"} 1.0' in telemetry.exposition()
    finally:
        await comp.close()
        telemetry.close()


def test_a_bad_pattern_is_refused_with_its_name():
    from nlweb_local.config.settings import PrivacySettings

    with pytest.raises(ValueError, match="redact_patterns.STAFF"):
        PrivacySettings(redact_patterns={"STAFF": "EMP-[0-9"})
    with pytest.raises(ValueError, match="upper case"):
        PrivacySettings(redact_patterns={"staff": "x"})

"""`ReplayProvider`: a stand-in for a cloud model, answering ranking calls from recorded labels.

The evaluation file holds, per (query, candidate), the score a strong cloud model (GPT-4.1 in
NLWeb's recordings) gave. Replaying those answers lets the ranking pipeline and the hybrid router be
measured — quality, tokens, cost — without a network. A ranking prompt is matched to its label by the
item's text and by the recorded query appearing in the prompt's question. Priced like the recorded
model (`price_in_per_m`/`price_out_per_m`, default gpt-4.1's $2/$8 per 1M tokens).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Sequence

from ..core.errors import ModelOutputError
from ..core.item_text import item_text
from ..core.types import ChatChunk, ChatRequest, LabelProbs, Usage
from .base import BaseProvider, Capabilities


class ReplayProvider(BaseProvider):
    def __init__(self, rows: Iterable[dict[str, Any]], *, name: str = "replay", model: str = "gpt-4.1",
                 item_chars: int = 480):
        self.name, self.model = name, model
        self.capabilities = Capabilities(context_window=1_000_000, json_schema=True, local=False, classify=True,
                                         enforces_deadline=True)
        self._by_text: dict[str, list[tuple[str, float, str]]] = defaultdict(list)
        for r in rows:
            text = item_text(r["schema_object"], item_chars)
            self._by_text[text].append((r["query"], float(r["label"]["score"]), r["label"].get("description", "")))
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> "ReplayProvider":
        with open(path) as f:
            return cls((json.loads(line) for line in f if line.strip()), **kw)

    def _lookup(self, prompt: str) -> tuple[float, str]:
        question, _, rest = prompt.partition("\nItem: ")
        text = rest.rsplit("\n", 1)[0]
        # the longest recorded query found in the question: a follow-up's question also contains the
        # earlier query of its conversation
        for query, score, desc in sorted(self._by_text.get(text, ()), key=lambda e: -len(e[0])):
            if query in question:
                return score, desc
        raise ModelOutputError(f"{self.name}: no recorded answer for this prompt (not a labelled ranking call)",
                               deployment=self.name)

    def _account(self, req: ChatRequest, completion_tokens: int) -> Usage:
        prompt_tokens = sum(len(m.content) for m in req.messages) // 4
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, time_to_first_token_s=0.0, total_s=0.0)

    async def classify(self, request: ChatRequest, labels: Sequence[str]) -> LabelProbs:
        score, _ = self._lookup(request.messages[-1].content)
        self._account(request, 1)
        p = score / 100.0
        return LabelProbs({labels[0]: p, **{lab: (1 - p) / max(1, len(labels) - 1) for lab in labels[1:]}})

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        score, desc = self._lookup(request.messages[-1].content)
        text = json.dumps({"score": int(score), "description": desc})
        yield ChatChunk(text, "stop", self._account(request, len(text) // 4))

"""Cache entries as compact, JSON-able dicts (so a shared backend such as Redis can hold them), and the
answers rebuilt from them. Every entry is a stream of chunks — a non-streamed answer is one chunk — so
one entry serves both a streamed and a non-streamed request:

    {"v": 1, "ts": stored at (unix s), "d": deployment, "l": local?, "m": model, "mv": model version,
     "rs": why it was routed there, "t": task, "ti"/"to": tokens in/out, "c": what the call cost,
     "r": what the reference cloud model would have charged,
     "ch": [[delta, finish_reason, tool_calls | null, usage | null], ...]}     (chat)
     "vec": [[float, ...], ...], "pt": prompt tokens                           (embeddings)

usage is [prompt_tokens, completion_tokens, time_to_first_token_s, total_s]. Anything that does not
read back as this shape raises `CorruptEntry` (the cache then drops the entry and counts it).
"""
from __future__ import annotations

from typing import Any

from ..core.types import ChatChunk, ChatResponse, EmbeddingResponse, Served, Usage
from ..providers.base import merge_tool_call_delta

VERSION = 1


class CorruptEntry(ValueError):
    """A stored value that is not an entry this code can serve."""


def head(*, ts: float, served: Served | None, deployment: str, local: bool, task: str, tokens: tuple[int, int],
         price: tuple[float, float]) -> dict[str, Any]:
    return {"v": VERSION, "ts": ts, "d": served.deployment if served is not None else deployment, "l": local,
            "m": served.model if served is not None else "", "mv": served.model_version if served is not None else "",
            "rs": served.reason if served is not None else "", "t": task, "ti": tokens[0], "to": tokens[1],
            "c": price[0], "r": price[1]}


def encode_chunk(ch: ChatChunk) -> list[Any]:
    u = ch.usage
    usage = None if u is None else [u.prompt_tokens, u.completion_tokens, u.time_to_first_token_s, u.total_s]
    return [ch.delta, ch.finish_reason, ch.tool_calls, usage]


def response_chunks(resp: ChatResponse) -> list[list[Any]]:
    """A non-streamed answer as the one chunk it is stored as."""
    calls = [{**tc, "index": i} for i, tc in enumerate(resp.tool_calls)] or None
    return [encode_chunk(ChatChunk(resp.content, resp.finish_reason, resp.usage, calls))]


def check(raw: Any) -> dict[str, Any]:
    """`raw` as an entry of this version, or `CorruptEntry`."""
    if not isinstance(raw, dict) or raw.get("v") != VERSION:
        raise CorruptEntry(f"not a cache entry of version {VERSION}")
    for key, kind in (("ts", (int, float)), ("d", str), ("l", bool), ("c", (int, float)), ("r", (int, float)),
                      ("ti", int), ("to", int)):
        if not isinstance(raw.get(key), kind):
            raise CorruptEntry(f"entry field {key!r} is missing or of the wrong type")
    return raw


def served_of(entry: dict[str, Any], outcome: str) -> Served:
    return Served(entry["d"], "cache hit", (), str(entry.get("m", "")), str(entry.get("mv", "")), cache=outcome)


def _usage(u: Any) -> Usage | None:
    if u is None:
        return None
    prompt, completion, ttft, total = u
    if not isinstance(prompt, int) or not isinstance(completion, int):
        raise CorruptEntry("usage tokens are not integers")
    return Usage(prompt, completion, ttft, total)


def chunks_of(entry: dict[str, Any], outcome: str) -> list[ChatChunk]:
    """The stored stream, chunk for chunk; the first carries `served` (with the cache outcome)."""
    raw = entry.get("ch")
    if not isinstance(raw, list) or not raw:
        raise CorruptEntry("entry holds no chunks")
    out: list[ChatChunk] = []
    try:
        for delta, finish, calls, usage in raw:
            if not isinstance(delta, str) or not (finish is None or isinstance(finish, str)) \
                    or not (calls is None or isinstance(calls, list)):
                raise CorruptEntry("a chunk has the wrong shape")
            out.append(ChatChunk(delta, finish, _usage(usage), calls))
    except (TypeError, ValueError) as e:
        raise CorruptEntry(f"a chunk has the wrong shape: {e}") from None
    out[0].served = served_of(entry, outcome)
    return out


def response_of(entry: dict[str, Any], outcome: str) -> ChatResponse:
    """The non-streamed answer: the stored chunks assembled (as `providers.base.assemble` does)."""
    chunks = chunks_of(entry, outcome)
    finish, usage = "stop", None
    calls: dict[int, dict] = {}
    for ch in chunks:
        finish = ch.finish_reason or finish
        usage = ch.usage or usage
        for tc in ch.tool_calls or ():
            if not isinstance(tc, dict):
                raise CorruptEntry("a tool call is not an object")
            merge_tool_call_delta(calls, tc)
    served = chunks[0].served
    return ChatResponse("".join(ch.delta for ch in chunks), finish, usage or Usage(), model=served.model,
                        deployment=served.deployment, tool_calls=[calls[i] for i in sorted(calls)], served=served)


def embedding_of(entry: dict[str, Any], outcome: str) -> EmbeddingResponse:
    vec = entry.get("vec")
    if not isinstance(vec, list) or not all(isinstance(v, list) for v in vec):
        raise CorruptEntry("entry holds no vectors")
    pt = entry.get("pt", 0)
    if not isinstance(pt, int):
        raise CorruptEntry("prompt tokens are not an integer")
    return EmbeddingResponse(vec, model=str(entry.get("m", "")), prompt_tokens=pt, deployment=entry["d"], cache=outcome)

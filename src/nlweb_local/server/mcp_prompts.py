"""MCP prompts (`prompts/list`, `prompts/get`): ready-made requests an agent's user can pick, each telling
the model which of this server's tools to call. Pure data and text; no search runs here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .jsonrpc import INVALID_PARAMS, JsonRpcError


@dataclass(frozen=True)
class PromptArgument:
    name: str
    description: str
    required: bool = False


@dataclass(frozen=True)
class McpPrompt:
    name: str
    description: str
    arguments: tuple[PromptArgument, ...]
    text: Callable[[dict[str, str]], str]

    def listing(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "arguments": [{"name": a.name, "description": a.description, "required": a.required}
                              for a in self.arguments]}

    def get(self, arguments: dict[str, Any]) -> dict[str, Any]:
        for a in self.arguments:
            value = arguments.get(a.name)
            if a.required and (not isinstance(value, str) or not value.strip()):
                raise JsonRpcError(INVALID_PARAMS, f'Invalid params: prompt {self.name!r} needs the argument "{a.name}" '
                                   f"({a.description})")
        args = {k: str(v).strip() for k, v in arguments.items() if v is not None}
        return {"description": self.description,
                "messages": [{"role": "user", "content": {"type": "text", "text": self.text(args)}}]}


def _search(args: dict[str, str]) -> str:
    where = f'the site "{args["site"]}"' if args.get("site") else "all the sites this server has"
    return (f"Search {where} for: {args['query']}\n\nCall the `ask` tool with this query"
            + (f' and site ["{args["site"]}"]' if args.get("site") else "")
            + ". Answer from the items it returns, and give each item's URL.")


def _find_site(args: dict[str, str]) -> str:
    return (f"Which site can best answer: {args['query']}\n\nCall the `who` tool with this query, then call `ask` "
            "with the query and the best-ranked site, and answer from its items with their URLs.")


_QUERY = PromptArgument("query", "the question, in natural language", required=True)

PROMPTS: tuple[McpPrompt, ...] = (
    McpPrompt("search", "Search the indexed sites (or one of them) and answer with sources.",
              (_QUERY, PromptArgument("site", "one site name from list_sites; empty: all sites")), _search),
    McpPrompt("find_site", "Find the site most likely to answer a question, then ask it.", (_QUERY,), _find_site),
)


def get_prompt(params: dict[str, Any]) -> dict[str, Any]:
    """`prompts/get`: the prompt's messages, or -32602 naming what is wrong."""
    names = ", ".join(p.name for p in PROMPTS)
    name = params.get("name")
    prompt = next((p for p in PROMPTS if p.name == name), None)
    if prompt is None:
        raise JsonRpcError(INVALID_PARAMS, f"Invalid params: unknown prompt {name!r}; the prompts are {names}")
    arguments = params.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise JsonRpcError(INVALID_PARAMS, 'Invalid params: "arguments" must be an object of strings')
    return prompt.get(arguments)

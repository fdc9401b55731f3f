"""Prompts and output schemas of the four search tasks. Shared text first, item-specific text last,
so consecutive ranking calls share a prompt prefix the engine can reuse."""
from __future__ import annotations

RANK_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "description": {"type": "string", "maxLength": 160},
    },
    "required": ["score", "description"],
}

DECONTEXTUALIZE_SCHEMA = {
    "type": "object",
    "properties": {"decontextualized_query": {"type": "string", "maxLength": 200}},
    "required": ["decontextualized_query"],
}



RANK_LABELS = ("Yes", "No")


def rank_prompt(query: str, item_text: str) -> str:
    """A yes/no relevance question; the score is 100 × P(Yes) read from one forward pass."""
    return (
        f"Question: {query}\n"
        f"Item: {item_text}\n"
        "Is this item a good answer to the question? Answer Yes or No."
    )


def decontextualize_prompt(query: str, prev: list[str], last_answers: list[str]) -> str:
    history = "\n".join(f"- {p}" for p in prev[-5:])
    answers = ("\nEarlier answers included: " + "; ".join(last_answers[:5])) if last_answers else ""
    return (
        "Rewrite the user's latest question so that it can be understood on its own, using the earlier "
        "questions of the conversation for context. Keep it short; do not answer it.\n"
        f"Earlier questions:\n{history}{answers}\n"
        f"Latest question: {query}\n"
        'Answer as {"decontextualized_query": "<standalone question>"}.'
    )


def summarize_prompt(query: str, lines: list[str]) -> str:
    """`lines`: each item's name and facts in one compact line (search/grounding.py: `fact_line`)."""
    listing = "\n".join(f"[{i + 1}] {e}" for i, e in enumerate(lines))
    return (
        f"Items found on the website:\n{listing}\n"
        f"Search: {query}\n"
        "In two or three sentences, say which of these items fit the search best and why. Use only the facts "
        "listed above, and copy names, numbers, times and prices exactly as listed. Do not repeat the search."
    )


def generate_prompt(query: str, lines: list[str]) -> str:
    """`lines`: as for `summarize_prompt`."""
    listing = "\n".join(f"[{i + 1}] {e}" for i, e in enumerate(lines))
    return (
        f"Items from the website:\n{listing}\n"
        f"Question: {query}\n"
        "Answer the question in a few sentences using only the facts listed above. Name each item you use "
        "exactly as listed and cite it like [1]. Copy numbers, times and prices exactly as listed. "
        "Do not repeat the question."
    )

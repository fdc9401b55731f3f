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


def summarize_prompt(query: str, entries: list[str]) -> str:
    listing = "\n".join(f"{i + 1}. {e}" for i, e in enumerate(entries))
    return (
        f"The user asked: {query}\nThese items were found:\n{listing}\n"
        "In two or three sentences, tell the user what was found and which items fit best."
    )


def generate_prompt(query: str, entries: list[str]) -> str:
    listing = "\n".join(f"[{i + 1}] {e}" for i, e in enumerate(entries))
    return (
        f"Answer the user's question using only these items from the website, citing them as [1], [2].\n"
        f"Items:\n{listing}\n"
        f"Question: {query}\n"
        "Answer in a few sentences, citing the items you use like [1]."
    )

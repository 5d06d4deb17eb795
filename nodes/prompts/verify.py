"""Verifier prompts: one yes/no question about one image."""

from __future__ import annotations

VERIFY_SYSTEM = """You check one requirement of a generated image.
Look at the image and answer the question with one word, yes or no. Answer yes only when the image clearly
satisfies the question."""

VERIFY_USER = "Question: {criterion}"

VERIFY_BATCH_SYSTEM = """You check every requirement of a generated image.
Look at the image, then answer each numbered question with yes or no and a few words on why. Answer yes only when
the image clearly satisfies the question.
Answer with a JSON array, one object per question, in order, and nothing else:
[{"n": 1, "answer": "yes", "why": "a few words"}, ...]"""

VERIFY_BATCH_USER = """Questions:
{questions}"""


def numbered(criteria: list[str]) -> str:
    return "\n".join(f"{i}. {q}" for i, q in enumerate(criteria, 1))

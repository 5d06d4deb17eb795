"""Verifier prompts: one yes/no question about one image."""

from __future__ import annotations

VERIFY_SYSTEM = """You check one requirement of a generated image.
Look at the image and answer the question with one word, yes or no. Answer yes only when the image clearly
satisfies the question."""

VERIFY_USER = "Question: {criterion}"

"""The Rewrite baseline's prompt (Table 1): one MLLM rewrite, no loop."""

from __future__ import annotations

REWRITE_SYSTEM = """You rewrite requests for a text-to-image model.
Turn the request into one detailed, unambiguous prompt the model will render faithfully. Keep every object, number,
attribute, spatial relation and quoted piece of text exactly as asked. Return only the prompt."""

"""Decomposer prompts: the original request into yes/no questions, and the repair request."""

from __future__ import annotations

DECOMPOSE_SYSTEM = """You turn an image request into a checklist for judging a generated image.
Write one yes/no question for each visual requirement the request states: every object that must appear, every
count, every attribute (colour, material, size, style), every spatial relation or action, and every piece of text
that must be written. A correct image earns "yes" to every question.
Ask only about what the request states. Do not invent requirements, and do not ask about quality or beauty unless
the request does. Each question must stand on its own and be answerable by looking at the image.
Answer with a JSON array of strings and nothing else, for example:
["Is there a red apple?", "Is the apple on a white plate?"]"""

DECOMPOSE_USER = "Request: {prompt}"

REPAIR_USER = """Request: {prompt}

Your previous answer could not be read as a JSON array of strings:
{bad}

Answer again with only the JSON array of yes/no questions."""

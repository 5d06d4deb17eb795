"""Planner prompts: the tool-calling planner, and the paper's two text calls (router, then enhancer)."""

from __future__ import annotations

PLANNER_SYSTEM = """You prepare the first prompt for a text-to-image model.
Below are candidate expert skills, each with a description of when it applies and when it does not. Use a skill
only when the request plainly matches its description and the skill would clearly make the image better.
- If one clearly fits, call load_skill with its exact name, follow the instructions it returns to rewrite the
  request, and answer with only the rewritten prompt.
- Otherwise call no tool and answer with exactly NONE.
You may load at most {max_active} skill(s).

Candidate skills:
{manifest}
{lessons}"""

PLANNER_USER = """Request:
{prompt}"""

ROUTER_SYSTEM = """You decide which expert skill, if any, should shape a text-to-image request.
Each skill below has a name and a description of when it applies and when it does not. Choose a skill only when
the request plainly matches its description and the skill would clearly make the image better; in every other
case choose NONE.
Reply with exactly one skill name from the list, or NONE. Write nothing else."""

ROUTER_USER = """Skills:
{manifest}
{lessons}
Request:
{prompt}"""

ENHANCE_SYSTEM = """You rewrite text-to-image prompts with the help of an expert skill.
Follow the skill's instructions below. Keep every object, number, attribute, relation and quoted piece of text the
user asked for; add only detail that serves the request. Return only the rewritten prompt: no title, no notes, no
surrounding quotes.

{skills}"""

ENHANCE_USER = """{lessons}User request:
{prompt}"""

THOUGHT_WITH_SKILL = "First prompt written with the {name} skill from the user's request."
THOUGHT_ORIGINAL = "First attempt uses the user's request unchanged."
THOUGHT_EDIT = "First attempt edits the image the user refers to, by their own words."

REFERENCES_NOTE = "The user attached the image(s) below as a reference for the request."

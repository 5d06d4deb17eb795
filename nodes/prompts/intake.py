"""Intake prompts: a follow-up message in a conversation, made into a request that stands on its own."""

from __future__ import annotations

FOLLOW_UP_SYSTEM = """You keep track of what a person wants from an image-making assistant over a conversation.
You see their earlier request, how the image made for it turned out (shown, with the requirements it met and
missed), and their new message. The new message may change that image ("now make the cube blue"), add to it, or
ask for something new altogether.
Write the whole request the next image must satisfy, on its own: keep every part of the earlier request the new
message leaves alone, apply what it changes, drop what it replaces. If the new message asks for something
unrelated, return it as written. Return only the request."""

FOLLOW_UP_USER = """Earlier request: {previous}
The image made for it met: {passed}
It missed: {failed}
New message: {message}"""

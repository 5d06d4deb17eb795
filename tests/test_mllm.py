"""The MLLM adapter and parsers: real ChatOpenAI against a local OpenAI-compatible server."""

from __future__ import annotations

import pytest

from gems.configs import MLLMSettings
from gems.memory.aio import run_blocking
from gems.nodes.mllm import MLLM, MLLMError, image_part, split_thinking, text_part
from gems.nodes.parsing import CriteriaParseError, clean_prompt, parse_criteria, parse_skill_choice, parse_verdict
from tests.support.servers import HTTPFailure, OpenAIStub


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("yes", True),
        ("Yes.", True),
        ("YES", True),
        ("**Yes**", True),
        ("Yes, nothing is missing.", True),
        ("no", False),
        ("No, the cat is blue.", False),
        ("not sure", None),
        ("noted: it is red", None),
        ("yesterday's cat", None),
        ("The answer is yes", None),
        ("", None),
        ("<think>is it a no? the cat is red</think>Yes", True),
    ],
)
def test_verdict_is_the_first_word(answer, expected):
    assert parse_verdict(answer) is expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('["Is there a cat?", "Is it red?"]', ["Is there a cat?", "Is it red?"]),
        ('```json\n["Is there a cat?"]\n```', ["Is there a cat?"]),
        ('Here you go:\n["Is there a cat?",\n "Is there a cat?"]\nDone.', ["Is there a cat?"]),
        ('{"criteria": ["Is the sky green?"]}', ["Is the sky green?"]),
        ('[{"question": "Is there a dog?"}]', ["Is there a dog?"]),
        ("[]", []),
        ('<think>[maybe]</think>["Is it night?"]', ["Is it night?"]),
    ],
)
def test_criteria_parse(answer, expected):
    assert parse_criteria(answer) == expected


@pytest.mark.parametrize("answer", ["1. Is there a cat?\n2. Is it red?", "[1, 2]", '["ok", 3]', "", "[unclosed"])
def test_criteria_parse_rejects_non_json_lists(answer):
    with pytest.raises(CriteriaParseError):
        parse_criteria(answer)


def test_skill_choice_and_prompt_cleaning():
    names = ["text-rendering", "spatial-layout"]
    assert parse_skill_choice(" `spatial-layout` \n", names) == "spatial-layout"
    assert parse_skill_choice("NONE", names) is None
    assert parse_skill_choice("spatial-layout, because", names) is None
    assert clean_prompt('Prompt: "a red cube"') == "a red cube"
    assert clean_prompt("**Refined prompt:** a cube") == "a cube"
    assert clean_prompt("```\na cube on a table\n```") == "a cube on a table"
    assert split_thinking("<think>plan it</think>  answer") == ("answer", "plan it")
    assert split_thinking("answer <think>cut off") == ("answer", "cut off")


def serve(chat):
    return OpenAIStub(chat=chat).start()


def test_reply_keeps_reasoning_content_and_sends_images_as_data_urls():
    server = serve(lambda body: {"content": "a crimson cat", "reasoning_content": "red was too weak"})
    try:
        mllm = MLLM(MLLMSettings(base_url=server.base_url, model="m1", api_key="sk-x", max_retries=0))
        reply = run_blocking(mllm.ask("sys", [text_part("look"), image_part("data:image/png;base64,iVBORw0KGgo=")]))
    finally:
        server.stop()
    assert (reply.text, reply.thought) == ("a crimson cat", "red was too weak")
    assert reply.usage["input_tokens"] == 11 and reply.usage["output_tokens"] == 3
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"  # chat completions, not the Responses API
    assert request["headers"]["authorization"] == "Bearer sk-x"
    body = request["body"]
    assert body["model"] == "m1" and body["messages"][0] == {"role": "system", "content": "sys"}
    assert body["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }


def test_inline_think_tags_become_the_thought():
    server = serve(lambda body: "<think>try bolder words</think>a bold red cat")
    try:
        reply = run_blocking(MLLM(MLLMSettings(base_url=server.base_url, max_retries=0)).ask("s", "u"))
    finally:
        server.stop()
    assert (reply.text, reply.thought) == ("a bold red cat", "try bolder words")


def test_transient_errors_are_retried_with_backoff():
    calls = []

    def chat(body):
        calls.append(1)
        if len(calls) < 3:
            raise HTTPFailure(503, "overloaded")
        return "fine"

    server = serve(chat)
    try:
        reply = run_blocking(MLLM(MLLMSettings(base_url=server.base_url, max_retries=3)).ask("s", "u"))
    finally:
        server.stop()
    assert reply.text == "fine" and len(calls) == 3


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "rejected the API key; set GEMS_MLLM_API_KEY"),
        (404, "answered 404: check mllm.model and that mllm.base_url ends in /v1"),
        (400, "answered HTTP 400: bad things"),
    ],
)
def test_http_errors_become_one_line(status, expected):
    def chat(body):
        raise HTTPFailure(status, "bad things")

    server = serve(chat)
    try:
        with pytest.raises(MLLMError) as info:
            run_blocking(MLLM(MLLMSettings(base_url=server.base_url, model="mx", max_retries=0)).ask("s", "u"))
    finally:
        server.stop()
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert f"MLLM endpoint {server.base_url} (model mx)" in str(info.value)


def test_timeout_is_reported():
    import threading

    gate = threading.Event()

    def chat(body):
        gate.wait(5)
        return "late"

    server = serve(chat)
    try:
        with pytest.raises(MLLMError, match=r"timed out after 0.3s; raise mllm.timeout_s"):
            run_blocking(MLLM(MLLMSettings(base_url=server.base_url, timeout_s=0.3, max_retries=0)).ask("s", "u"))
    finally:
        gate.set()
        server.stop()


def test_settings_options_reach_the_request():
    server = serve(lambda body: "ok")
    try:
        settings = MLLMSettings(
            base_url=server.base_url,
            temperature=0.2,
            max_tokens=123,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
            max_retries=0,
        )
        run_blocking(MLLM(settings).ask("s", "u"))
    finally:
        server.stop()
    body = server.requests[0]["body"]
    assert body["temperature"] == 0.2 and body["max_completion_tokens"] == 123
    assert body["chat_template_kwargs"] == {"enable_thinking": False}

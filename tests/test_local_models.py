"""The MLLM and the judge in this process (`backend: transformers`), on a tiny random-weight Qwen3-VL built in code."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from gems.configs import GemsError, GemsSettings, JudgeSettings, MLLMSettings
from gems.graph import build_graph, run_config
from gems.interfaces.benchmarks.scoring import LocalSoftTIFAScorer, answer_strings
from gems.interfaces.cli import main as gems_main
from gems.memory.aio import run_blocking
from gems.nodes.generators.base import GeneratorError
from gems.nodes.generators.diffusers_backend import _pick_device, load_pipeline
from gems.nodes.local_vlm import (
    LocalModelError,
    TransformersChat,
    hf_messages,
    load_vlm,
    parse_tool_calls,
    split_reasoning,
)
from gems.nodes.mllm import MLLM, MLLMError, image_part, text_part
from gems.nodes.prompts.compress import COMPRESS_SYSTEM
from gems.nodes.prompts.decompose import DECOMPOSE_SYSTEM
from gems.nodes.prompts.plan import PLANNER_SYSTEM, ROUTER_SYSTEM
from gems.nodes.prompts.refine import REFINE_SYSTEM
from gems.nodes.prompts.verify import VERIFY_SYSTEM
from gems.skills.tools import SKILL_TOOLS
from tests.support.tiny_vlm import CHAT_TEMPLATE, SCRIPTED_ANSWER, TEXT_ONLY_TEMPLATE, save_tiny_qwen3_vl

NOWHERE = "http://127.0.0.1:9/v1"  # nothing listens: a call that left the process would fail
ROLES = {"plan": PLANNER_SYSTEM, "route": ROUTER_SYSTEM, "decompose": DECOMPOSE_SYSTEM, "verify": VERIFY_SYSTEM,
         "compress": COMPRESS_SYSTEM, "refine": REFINE_SYSTEM}  # fmt: skip


@pytest.fixture(scope="session")
def vlm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Qwen3-VL folders: `scripted` (answers SCRIPTED_ANSWER), `random`, and template variants of them."""
    root = tmp_path_factory.mktemp("tiny-vlm")
    dirs = {
        "scripted": save_tiny_qwen3_vl(root / "scripted", scripted=True),
        "random": save_tiny_qwen3_vl(root / "random", seed=1),
    }
    variants = {
        "scripted-no-tools": ("scripted", TEXT_ONLY_TEMPLATE),
        "thinking": ("scripted", CHAT_TEMPLATE.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n")),
    }
    for name, (source, template) in variants.items():
        dirs[name] = Path(shutil.copytree(dirs[source], root / name))
        (dirs[name] / "chat_template.jinja").write_text(template, encoding="utf-8")
    return dirs


def red_png(path: Path, size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (220, 20, 20)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def local_settings(data_dir: Path, model: Path, sd: Path, rounds: int = 2) -> GemsSettings:
    return GemsSettings.model_validate(
        {
            "data_dir": str(data_dir),
            "mllm": {
                "backend": "transformers",
                "model": str(model),
                "base_url": NOWHERE,
                "device": "cpu",
                "temperature": 0,
                "max_tokens": 12,
                "timeout_s": 60,
            },
            "generator": {
                "backend": "diffusers",
                "preset": None,
                "model": str(sd),
                "width": 64,
                "height": 64,
                "steps": 2,
                "device": "cpu",
            },
            "loop": {"max_rounds": rounds},
            "storage": {"checkpointer": "memory"},
            "memory": {"lessons": False},
        }
    )


@pytest.fixture
def role_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The role of every call the in-process model answers, read from its system prompt."""
    calls: list[str] = []
    complete = TransformersChat.complete

    def recording(self, vlm, messages, tools, cancel, stop=None):
        system = messages[0].content if isinstance(messages[0], SystemMessage) else ""
        calls.append(next((r for r, p in ROLES.items() if system.startswith(p[:40])), "other"))
        return complete(self, vlm, messages, tools, cancel, stop)

    monkeypatch.setattr(TransformersChat, "complete", recording)
    return calls


def run(settings: GemsSettings, prompt: str = "a red cube") -> dict:
    graph = build_graph(checkpointer=InMemorySaver())
    config = run_config(settings, "local-1")
    graph.invoke({"prompt": prompt}, config, context=settings, durability="sync")
    return graph.get_state(config).values


@pytest.mark.parametrize("folder", ["scripted", "scripted-no-tools"])
def test_every_role_runs_on_the_in_process_model_through_a_whole_run(
    folder, vlm_dirs, tiny_sd_dir, isolated_env, role_calls
):
    values = run(local_settings(isolated_env, vlm_dirs[folder], tiny_sd_dir), "a red cube on a table")
    # The scripted answer is a criteria list, an unclear verdict, a prompt and an experience: two whole rounds.
    assert values["criteria"] == ["Is it red?"]
    assert [r["round"] for r in values["rounds"]] == [1, 2] and values["success"] is False
    first, second = values["rounds"]
    assert first["failed"] == ["Is it red?"] and first["verdicts"][0]["answer"] == SCRIPTED_ANSWER
    assert first["experience"] and second["experience"] is None  # the last round is not compressed
    assert second["prompt"] != first["prompt"] and "Is it red" in second["prompt"]  # the refiner's prompt
    # Every role, each call through the in-process model, none anywhere else (mllm.base_url listens to nothing).
    roles = Counter({"plan": 1, "decompose": 1, "verify": 2, "compress": 1, "refine": 1})
    if folder == "scripted":  # tools bound through the template; the answer called none
        assert values["skill_trace"]["mode"] == "auto"
    else:  # a template without tools refuses them (501): the planner falls back to the router's text mode
        assert values["skill_trace"]["mode"] == "text (tools refused: HTTP 501)"
        roles["route"] = 1
    assert Counter(role_calls) == roles
    answered = sum(roles.values()) - (folder != "scripted")  # the refused tools call answered nothing
    assert values["mllm_calls"] == answered
    assert values["usage"]["input_tokens"] > 0 and values["usage"]["output_tokens"] == 6 * answered


def test_random_weights_finish_the_run_or_end_it_in_one_line(vlm_dirs, tiny_sd_dir, isolated_env, role_calls):
    try:
        values = run(local_settings(isolated_env, vlm_dirs["random"], tiny_sd_dir, rounds=1))
    except GemsError as exc:  # garbage criteria, repaired once, then a one-line error
        assert "\n" not in str(exc) and "JSON list of questions" in str(exc)
        assert role_calls.count("decompose") == 2
    else:
        assert values["final"] is not None and "verify" in role_calls
    assert "plan" in role_calls and "other" not in role_calls


def test_a_template_without_tools_refuses_them_with_status_501(vlm_dirs):
    folder = str(vlm_dirs["scripted-no-tools"])
    mllm = MLLM(MLLMSettings(backend="transformers", model=folder, device="cpu", max_tokens=2))
    with pytest.raises(MLLMError, match="has no tool calling") as err:
        run_blocking(mllm.converse([SystemMessage("plan"), HumanMessage("a cat")], SKILL_TOOLS))
    assert err.value.status == 501  # what plan.py's tool_calling: auto falls back on


def test_images_temperature_usage_and_loading_once(vlm_dirs, tmp_path):
    folder = str(vlm_dirs["scripted"])
    one = MLLM(MLLMSettings(backend="transformers", model=folder, device="cpu", temperature=0, max_tokens=12))
    other = MLLM(MLLMSettings(backend="transformers", model=folder, device="cpu", timeout_s=5, max_tokens=3))
    image = image_part("data:image/png;base64," + base64.b64encode(red_png(tmp_path / "r.png").read_bytes()).decode())
    reply = run_blocking(one.ask("You check.", [text_part("Is it red?"), image, image]))
    assert reply.text == SCRIPTED_ANSWER and reply.usage["output_tokens"] == 6 and reply.usage["image_parts"] == 2
    short = run_blocking(other.ask("You check.", "Is it red?"))
    assert short.text == '["Is it' and short.usage["output_tokens"] == 3  # max_tokens bounds new tokens
    stopped = one.chat.invoke([HumanMessage("Is it red?")], stop=[" red"])
    assert stopped.content == '["Is it' and stopped.response_metadata["finish_reason"] == "stop"
    # Both read the weights loaded once for the process; the image tokens are in the prompt.
    assert one.chat.vlm() is other.chat.vlm() is load_vlm(folder, "auto", "cpu")  # type: ignore[attr-defined]
    assert reply.usage["input_tokens"] == short.usage["input_tokens"] + 2 * 4  # per image: start, 2 patches, end


def test_missing_model_and_bad_images_are_one_line_errors(vlm_dirs):
    missing = MLLM(MLLMSettings(backend="transformers", model="nobody/no-such-vlm", device="cpu"))
    with pytest.raises(MLLMError, match="cannot load the in-process model 'nobody/no-such-vlm'") as err:
        run_blocking(missing.ask("s", "u"))
    assert "\n" not in str(err.value) and "hf download nobody/no-such-vlm" in str(err.value)
    mllm = MLLM(MLLMSettings(backend="transformers", model=str(vlm_dirs["scripted"]), device="cpu", max_tokens=2))
    with pytest.raises(MLLMError, match="takes images as data URLs"):
        run_blocking(mllm.ask("s", [image_part("https://example.com/cat.png")]))


def test_a_folder_without_weights_says_what_it_lacks_not_hf_download(vlm_dirs, tiny_sd_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(vlm_dirs["scripted"], bare, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(LocalModelError) as err:
        load_vlm(str(bare), "auto", "cpu")
    assert str(err.value) == (
        f"cannot load the in-process model {str(bare)!r}: no weight files (*.safetensors or *.bin) in the folder; "
        "point it at a folder with the whole model (one saved by save_pretrained)"
    )
    sd = Path(shutil.copytree(tiny_sd_dir, tmp_path / "sd", ignore=shutil.ignore_patterns("*.safetensors")))
    with pytest.raises(GeneratorError) as err:
        load_pipeline(str(sd), device="cpu")
    assert "hf download" not in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"cannot load diffusers model {str(sd)!r}: no weight files (*.safetensors or ")


def test_a_damaged_weight_file_is_one_line_naming_it(vlm_dirs, tiny_sd_dir, tmp_path):
    vlm = Path(shutil.copytree(vlm_dirs["scripted"], tmp_path / "vlm"))
    (vlm / "model.safetensors").write_bytes(bytes(range(256)) * 64)  # random bytes where the weights were
    with pytest.raises(LocalModelError) as err:
        load_vlm(str(vlm), "auto", "cpu")
    assert str(err.value) == (
        f"cannot load the in-process model {str(vlm)!r}: a damaged model.safetensors in the folder (cut short, or "
        "not a safetensors file); point it at a folder with the whole model (one saved by save_pretrained)"
    )
    sd = Path(shutil.copytree(tiny_sd_dir, tmp_path / "sd"))
    (encoder,) = (sd / "text_encoder").glob("*.safetensors")
    encoder.write_bytes(encoder.read_bytes()[: encoder.stat().st_size // 2])  # a copy cut short
    with pytest.raises(GeneratorError) as err:
        load_pipeline(str(sd), device="cpu")
    assert str(err.value) == (
        f"cannot load diffusers model {str(sd)!r}: a damaged {encoder.name} in text_encoder/ (cut short, or not "
        "a safetensors file); set generator.model to a local folder with the whole model (one saved by save_pretrained)"
    )


def shifted(vlm_dirs: dict[str, Path], tmp_path: Path, name: str, **text_config: int) -> Path:
    """The scripted folder with `text_config` changed in config.json (the weights no longer fit it)."""
    folder = Path(shutil.copytree(vlm_dirs["scripted"], tmp_path / name))
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(text_config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def transformers_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What transformers logs (its logger does not propagate to the root, where caplog listens)."""
    logger = logging.getLogger("transformers")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_weights_that_do_not_fit_the_config_are_one_line_and_nothing_else(vlm_dirs, tmp_path, capsys, transformers_log):
    folder = shifted(vlm_dirs, tmp_path, "wrong-shapes", intermediate_size=96)
    capsys.readouterr()
    with pytest.raises(LocalModelError) as err:
        load_vlm(str(folder), "auto", "cpu")
    message = str(err.value)  # the report lists the three MLP projections, in no fixed order
    assert message.startswith(f"cannot load the in-process model {str(folder)!r}: its weights do not fit its ")
    assert re.search(
        r"config\.json \(model\.language_model\.layers\.\{0, 1\}\.mlp\.(up|gate|down)_proj\.weight: "
        r"\[(128, 64|64, 128)\] in the weights, \[(96, 64|64, 96)\] in the config; and 2 more\)$",
        message,
    )
    # No load report, no "Loading weights" bar: the CLI prints the one line.
    assert transformers_log.records == [] and capsys.readouterr().err == ""
    # A load that works still shows transformers' report (here: a tensor the model has no place for).
    from safetensors.torch import load_file, save_file

    extra = Path(shutil.copytree(vlm_dirs["scripted"], tmp_path / "extra"))
    tensors = load_file(extra / "model.safetensors")
    save_file({**tensors, "model.unused.weight": tensors["lm_head.weight"][:2].clone()}, extra / "model.safetensors")
    load_vlm(str(extra), "auto", "cpu")
    assert "LOAD REPORT" in transformers_log.text and "model.unused.weight" in transformers_log.text


def test_one_model_loads_once_whatever_names_its_device_and_dtype(vlm_dirs):
    folder = str(vlm_dirs["scripted"])
    first = load_vlm(folder, "auto", "cpu")
    # On the CPU 'auto' is float32, and any requested half precision is float32 too: one copy in memory.
    assert load_vlm(folder, "float32", "cpu") is first and load_vlm(folder, "bfloat16", "cpu") is first
    if _pick_device("auto") == "cpu":
        assert load_vlm(folder, "auto", "auto") is first


def test_reasoning_the_template_opens_is_split_out(vlm_dirs):
    mllm = MLLM(MLLMSettings(backend="transformers", model=str(vlm_dirs["thinking"]), device="cpu", temperature=0))
    reply = run_blocking(mllm.ask("s", "u"))
    # The generation prompt ends in "<think>\n": all the model wrote before </think> (here, all of it) is thought.
    assert reply.thought == SCRIPTED_ANSWER and reply.text == ""
    assert split_reasoning("<think>hm</think> yes", opened=False) == ("yes", "hm")
    assert split_reasoning("hm</think>yes", opened=True) == ("yes", "hm")
    assert split_reasoning("plain", opened=False) == ("plain", None)


def test_tool_calls_render_through_the_template_and_parse_back(vlm_dirs):
    text, calls, invalid = parse_tool_calls(
        'ok <tool_call>\n{"name": "load_skill", "arguments": {"name": "counting"}}\n</tool_call>'
        "<tool_call>{broken</tool_call>"
    )
    assert text == "ok" and [(c["name"], c["args"]) for c in calls] == [("load_skill", {"name": "counting"})]
    assert len(invalid) == 1 and invalid[0]["args"] == "{broken"
    call = {"name": "load_skill", "args": {"name": "counting"}, "id": "c1"}
    chat = hf_messages([
        SystemMessage("plan"), HumanMessage("a cat"), AIMessage("", tool_calls=[call]),
        ToolMessage("the skill's body", tool_call_id="c1", name="load_skill"),
    ])  # fmt: skip
    vlm = load_vlm(str(vlm_dirs["scripted"]), "auto", "cpu")
    tools = TransformersChat(model_name="x").bind_tools(SKILL_TOOLS).kwargs["tools"]  # type: ignore[attr-defined]
    rendered = vlm.processor.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=True)
    assert '"name": "read_skill_resource"' in rendered  # the tools' schemas, in the system turn
    assert '{"name": "load_skill", "arguments": {"name": "counting"}}' in rendered
    assert "<tool_response>\nthe skill's body\n</tool_response>" in rendered


def test_a_deadline_stops_generation_at_the_next_token_without_blocking_the_loop(vlm_dirs, monkeypatch):
    folder = str(vlm_dirs["random"])  # no end token: it would write all 500 tokens
    vlm = load_vlm(folder, "auto", "cpu")
    steps, entered, release = [0], threading.Event(), threading.Event()
    forward = vlm.model.forward

    @functools.wraps(forward)  # generate checks its arguments against forward's signature
    def slow(*args, **kwargs):
        steps[0] += 1
        if steps[0] == 2:
            entered.set()
            release.wait(30)  # the second token waits here until the deadline has fired
        return forward(*args, **kwargs)

    monkeypatch.setattr(vlm.model, "forward", slow)
    mllm = MLLM(MLLMSettings(backend="transformers", model=folder, device="cpu", max_tokens=500, timeout_s=0.5))

    async def scenario() -> str:
        task = asyncio.ensure_future(mllm.ask("s", "u"))
        await asyncio.to_thread(entered.wait, 30)
        try:
            await task
        except MLLMError as exc:  # the deadline fired while the model's thread was busy: the loop was free
            return str(exc)
        finally:
            release.set()
        return "no error"

    message = run_blocking(scenario())
    assert "gave no complete answer" in message and "\n" not in message
    vlm.run(lambda: None)  # the model's thread is free again
    assert steps[0] <= 3  # not 500: the stopping criterion saw the cancel at the next token


def test_judge_equals_evaluation_py_on_the_same_model(vlm_dirs, tmp_path):
    """Soft-TIFA per atom against evaluation.py's computation restated: the processor's chat template, generate
    with one greedy token and scores, softmax over the whole vocabulary, `tokenizer.encode(answer)[0]`, summed."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    folder = str(vlm_dirs["random"])
    processor = load_vlm(folder, "auto", "cpu").processor  # AutoProcessor needs torchvision here, see tiny_vlm.py
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype="auto").eval()

    def official(image: str, question: str, answer_list: list[str]) -> float:
        content = [{"type": "image", "image": image}, {"type": "text", "text": f"{question} Answer in one word."}]
        messages = [{"role": "user", "content": content}]
        inputs = processor.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        outputs = model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        probs = torch.nn.functional.softmax(outputs.scores[0], dim=-1)
        lm_prob = 0
        for answer in answer_list:
            lm_prob += probs[0, processor.tokenizer.encode(answer)[0]].item()
        return lm_prob

    atoms = [("How many apples are in the image?", "three"), ("Is there a red cube?", "yes"),
             ("How many cats are there?", "eleven"), ("Is the sphere to the left of the cube?", "yes"),
             ("How many dogs are in the image?", "two")]  # fmt: skip
    tok = processor.tokenizer
    pieces = [a for a in ("three", "eleven", " 2") if tok.decode([tok.encode(a)[0]]) != a]
    assert pieces == ["three", "eleven", " 2"]  # answers whose first token is a piece of the word
    images = [red_png(tmp_path / "a.png"), red_png(tmp_path / "b.png", (48, 80), (20, 40, 230))]
    for share in (True, False):
        scorer = LocalSoftTIFAScorer(JudgeSettings(backend="transformers", model=folder, device="cpu",
                                                   share_image=share))  # fmt: skip
        for image in images:
            ours, tokens = scorer.atoms(str(image), atoms)
            expected = [official(str(image), q, answer_strings(q, a)) for q, a in atoms]
            assert [a["p"] for a in ours] == pytest.approx(expected, abs=1e-6, rel=0)
            assert tokens > 0
    # The numbers are not flat: a wrong token, position or image would show.
    per_image = [[official(str(i), q, answer_strings(q, a)) for q, a in atoms] for i in images]
    assert max(abs(x - y) for x, y in zip(*per_image, strict=True)) > 1e-3
    assert max(per_image[0]) - min(per_image[0]) > 1e-3


def test_bench_with_the_in_process_judge_in_shards(vlm_dirs, tiny_sd_dir, isolated_env, tmp_path):
    data = Path(__file__).parent / "data" / "bench" / "geneval2_data.jsonl"
    config = tmp_path / "local.yaml"
    config.write_text(
        f"data_dir: {isolated_env}\n"
        f"generator: {{backend: diffusers, preset: null, model: {tiny_sd_dir}, width: 64, height: 64, steps: 2, "
        "device: cpu}\n"
        f"judge: {{model: {vlm_dirs['random']}, device: cpu}}\n"
        "storage: {checkpointer: memory}\n"
    )
    outs = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}"
        args = ["bench", str(data), "--config", str(config), "--method", "original", "--out", str(out),
                "--judge-backend", "transformers", "--shard", f"{k}/2", "--quiet"]  # fmt: skip
        assert gems_main(args) == 0
        outs.append(str(out))
    assert gems_main(["bench", "merge", *outs, "--out", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["finished"] == 4 and summary["scores"]["soft_tifa_gm"] > 0
    assert "whole vocabulary" in summary["judge"] and "top-" not in summary["judge"]
    assert "in this process (transformers)" in (tmp_path / "all" / "report.md").read_text()
    # A result's atoms are the scorer's own numbers for that image.
    result = json.loads(next((tmp_path / "all" / "results").glob("*.json")).read_text())
    scorer = LocalSoftTIFAScorer(JudgeSettings(backend="transformers", model=str(vlm_dirs["random"]), device="cpu"))
    atoms = [(a["question"], a["expected"]) for a in result["score"]["atoms"]]
    again, _ = scorer.atoms(result["final"]["image"]["path"], atoms)
    assert [a["p"] for a in again] == pytest.approx([a["p"] for a in result["score"]["atoms"]], abs=1e-7)
    assert result["cost"]["judge_calls"] == len(atoms)


def test_gems_generate_without_the_weights_says_so_in_one_line(isolated_env, tmp_path, capsys, gen_server):
    config = tmp_path / "c.yaml"
    config.write_text(  # a generator that answers: gems generate checks it before the run too
        "mllm: {backend: transformers, model: nobody/no-such-vlm, device: cpu}\n"
        f"generator: {{backend: http, preset: null, url: {gen_server().url}}}\nmemory: {{lessons: false}}\n"
    )
    assert gems_main(["generate", "a cat", "--config", str(config), "--quiet", "--out", str(tmp_path / "o")]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gems: error")]
    assert len(errors) == 1 and "cannot load the in-process model 'nobody/no-such-vlm'" in errors[0]
    assert "hf download nobody/no-such-vlm" in errors[0]

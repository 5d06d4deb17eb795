"""A vision-language model in this process (`mllm.backend: transformers`, `judge.backend: transformers`).

`load_vlm` loads a transformers image-text-to-text model and its processor once per process (hub id or local
folder; device and dtype chosen as for the diffusers generator); the MLLM roles and the in-process judge share it.
`TransformersChat` puts it behind a LangChain chat model, so the roles, prompts and parsers are unchanged: images
arrive as OpenAI-style `image_url` data URLs, tools go through the chat template and come back parsed from
`<tool_call>` blocks, and `<think>` reasoning is split into `reasoning_content`. Generation runs on the model's own
worker thread (never on the event loop) and stops at the next token once its caller is cancelled.
torch and transformers are imported only when a model loads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import inspect
import io
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from gems.configs import GemsError, MLLMSettings
from gems.nodes.generators.diffusers_backend import (
    _pick_device,
    _pick_dtype,
    folder_lacks,
    is_local_path,
    loaded_once_key,
    model_folder,
)

T = TypeVar("T")
DEFAULT_MAX_NEW_TOKENS = 8192  # mllm.max_tokens unset: a model's own generation config often says 20


class LocalModelError(GemsError, RuntimeError):
    """The in-process model cannot load or cannot answer this request; the message is one line.

    `status_code` 501 means "this model's chat template has no tool calling": the planner's `tool_calling: auto`
    then falls back to its text mode, as it does when a server refuses tools.
    """

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return re.split(r"(?<=\.) ", text, maxsplit=1)[0][:200].rstrip(".")  # the first sentence: the rest is hub advice


@dataclass
class LocalVLM:
    """A loaded model, its processor, and the one thread that runs it.

    One call at a time: generation keeps per-call state on the model (Qwen-VL's rope deltas), and one GPU gains
    little from interleaving. A queue on a worker of its own, not a lock, so waiting calls hold no threads.
    """

    name: str
    model: Any
    processor: Any
    worker: ThreadPoolExecutor

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> Any:
        return self.model.device

    @functools.cached_property
    def renders_tools(self) -> bool:
        """Whether the chat template shows the model the tools it is given (rendered once with a probe tool)."""
        probe = {"type": "function", "function": {"name": "gems_probe_tool", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
        try:
            text = self.processor.apply_chat_template(
                [{"role": "user", "content": "hi"}], tools=[probe], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that cannot take tools at all
            return False
        return "gems_probe_tool" in str(text)

    def run(self, work: Callable[[], T]) -> T:
        """Run `work` on the model's thread and wait for it."""
        return self.worker.submit(work).result()

    async def arun(self, work: Callable[[], T]) -> T:
        """Await `work` on the model's thread; a cancel while it is still queued drops it."""
        return await asyncio.wrap_future(self.worker.submit(work))

    def next_token_distributions(
        self, image: Any, prompts: Sequence[str], share_image: bool = True
    ) -> tuple[list[Any], int]:
        """The probabilities over the whole vocabulary of the first token answering each prompt about `image`.

        Each prompt is one user turn, the image (a file path the processor loads, or a PIL image) then the text,
        through the chat template with the generation prompt. `share_image` encodes the image once: the common
        prefix (up to the image's end) runs one forward pass and its KV cache serves every prompt, the prompts'
        remaining tokens in one batch. Otherwise each prompt is a whole `generate(max_new_tokens=1)` call, as
        GenEval2's evaluation.py does. Returns float32 tensors on the CPU and the number of tokens the model read;
        run it on the model's thread (`run`).
        """
        if share_image and len(prompts) > 1:
            shared = self._shared_prefix_distributions(image, prompts)
            if shared is not None:
                return shared
        dists, tokens = [], 0
        for prompt in prompts:
            probs, read = self._one_token_distribution(image, prompt)
            dists.append(probs)
            tokens += read
        return dists, tokens

    def _judge_messages(self, image: Any, prompt: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]

    def _one_token_distribution(self, image: Any, prompt: str) -> tuple[Any, int]:
        import torch

        inputs = self.processor.apply_chat_template(
            self._judge_messages(image, prompt),
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
        probs = torch.nn.functional.softmax(out.scores[0], dim=-1)[0].float().cpu()
        return probs, int(inputs["input_ids"].shape[1])

    def _shared_prefix_distributions(self, image: Any, prompts: Sequence[str]) -> tuple[list[Any], int] | None:
        """One prefill of the image for every prompt, or None where the prompts do not split cleanly after it."""
        import torch

        if not _greedy_scores_are_logits(self.model.generation_config):
            return None  # generate would process the scores: only its own path gives the same numbers
        tok = self.tokenizer
        messages = [self._judge_messages(image, p) for p in prompts]
        first = self.processor.apply_chat_template(
            messages[0], tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        head = texts[0].find(prompts[0])
        if head < 0 or any(not t.startswith(texts[0][:head] + p) for t, p in zip(texts, prompts, strict=True)):
            return None
        tails = [tok(t[head:], add_special_tokens=False)["input_ids"] for t in texts]
        ids = first["input_ids"][0].tolist()
        cut = len(ids) - len(tails[0])
        # The prompt must start right after a special token (the image's end): then tokenizing the tail alone
        # gives the tokens it has in the whole sequence, whatever the prompt.
        if cut <= 0 or ids[cut:] != tails[0] or not _is_added_token(tok, ids[cut - 1]):
            return None
        kinds = first.get("mm_token_type_ids")
        if kinds is not None and bool(kinds[0, cut:].any()):
            return None
        forward = inspect.signature(self.model.forward).parameters
        cache_name = "cache" if "cache" in forward else "past_key_values"
        prefix: dict[str, Any] = {k: v for k, v in first.items() if k not in ("input_ids", "attention_mask")}
        if kinds is not None:
            prefix["mm_token_type_ids"] = kinds[:, :cut]
        if "logits_to_keep" in forward:
            prefix["logits_to_keep"] = 1
        device = self.device
        with torch.inference_mode():
            out = self.model(
                input_ids=first["input_ids"][:, :cut].to(device),
                attention_mask=first["attention_mask"][:, :cut].to(device),
                use_cache=True,
                **{k: v.to(device) if hasattr(v, "to") else v for k, v in prefix.items()},
            )
            cache = getattr(out, cache_name, None) or getattr(out, "past_key_values", None)
            if cache is None or not hasattr(cache, "batch_repeat_interleave"):
                return None
            cache.batch_repeat_interleave(len(prompts))
            # Right-padded: a causal model never lets a prompt's tokens see the padding after them, and with no
            # mask the model continues positions from the cache (Qwen-VL: plus the image's rope offset).
            width = max(len(t) for t in tails)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            batch = torch.full((len(prompts), width), pad, dtype=torch.long)
            for row, tail in enumerate(tails):
                batch[row, : len(tail)] = torch.tensor(tail, dtype=torch.long)
            logits = self.model(input_ids=batch.to(device), use_cache=True, **{cache_name: cache}).logits
            last = torch.tensor([len(t) - 1 for t in tails], device=logits.device)
            picked = logits[torch.arange(len(prompts), device=logits.device), last].float()
        dists = [row.cpu() for row in torch.nn.functional.softmax(picked, dim=-1)]
        return dists, cut + sum(len(t) for t in tails)


def _is_added_token(tokenizer: Any, token_id: int) -> bool:
    token = tokenizer.convert_ids_to_tokens(token_id)
    return token_id in set(tokenizer.all_special_ids) or token in tokenizer.get_added_vocab()


def _greedy_scores_are_logits(config: Any) -> bool:
    """True when greedy generate's first scores are the raw logits (no penalty, bias or suppression applies)."""
    neutral = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0}
    for name, value in neutral.items():
        if getattr(config, name, None) not in (None, value):
            return False
    for name in ("no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "forced_bos_token_id", "forced_eos_token_id", "sequence_bias", "min_new_tokens",
                 "exponential_decay_length_penalty", "forced_decoder_ids"):  # fmt: skip
        if getattr(config, name, None):
            return False
    return not getattr(config, "min_length", 0)


_vlms: dict[tuple[str, str, str, str | None], LocalVLM] = {}
_vlms_lock = threading.Lock()


def load_vlm(model: str, dtype: str = "auto", device: str = "auto", device_map: str | None = None) -> LocalVLM:
    """Load (once per process) and return the model for a hub id or a local folder.

    Once per model, device and dtype as they resolve: a judge asking for bfloat16 beside an MLLM whose 'auto' is
    bfloat16 shares its weights.

    Raises:
        LocalModelError: the weights or processor cannot be loaded; one line saying what to do.
    """
    with _vlms_lock:
        try:
            import torch  # noqa: F401  (a missing torch surfaces here, not mid-call)
            from safetensors import SafetensorError

            place = _pick_device(device if device_map is None else "auto")
            torch_dtype = _pick_dtype(dtype, place)
        except (ImportError, KeyError) as exc:
            raise LocalModelError(f"cannot load the in-process model {model!r}: {_one_line(exc)}") from exc
        key = (*loaded_once_key(model, place), str(torch_dtype), device_map)
        if key in _vlms:
            return _vlms[key]
        with _held_logs() as held:
            try:
                processor = _load_processor(model)
                net = _load_model(model, torch_dtype, device_map)
            except (OSError, ValueError, ImportError, KeyError, RuntimeError, SafetensorError) as exc:
                raise LocalModelError(_load_failure(model, exc, held)) from exc
        if device_map is None:
            net = net.to(place)
        net.eval()
        vlm = LocalVLM(model, net, processor, ThreadPoolExecutor(1, thread_name_prefix="gems-vlm"))
        _vlms[key] = vlm
        return vlm


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_logs() -> Iterator[list[logging.LogRecord]]:
    """transformers' and huggingface_hub's log records held while a model loads: shown once it has loaded,
    dropped when it fails (its one-line error says what matters, e.g. the first tensor of a 30-line load report).

    The hub's download bars still show (a first download is gigabytes; loading a diffusers pipeline turns them
    off); transformers' own "Loading weights" bar does not.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    if not constants.HF_HUB_DISABLE_PROGRESS_BARS:  # set by the user: theirs to keep (enabling it would warn)
        enable_progress_bars()
    held = _Held()
    loggers = [logging.getLogger("transformers"), logging.getLogger("huggingface_hub")]
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [held], False
    try:
        yield held.records
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        if bars:
            transformers_logging.enable_progress_bar()
    for record in held.records:  # loaded: what transformers had to say, as it would have said it
        logging.getLogger(record.name).handle(record)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MISMATCH = re.compile(
    r"^([^\s|][^|\n]*?)[ \t]*\|[ \t]*MISMATCH[ \t]*\|.*?"
    r"ckpt:[ \t]*torch\.Size\((\[[^\]]*\])\)[ \t]*vs[ \t]*model:[ \t]*torch\.Size\((\[[^\]]*\])\)",
    re.MULTILINE,
)


def _load_failure(model: str, exc: BaseException, held: list[logging.LogRecord]) -> str:
    """The one line for a load that failed: what a local folder lacks, which tensor does not fit the config, or
    the error's first sentence; `hf download` advice only for a hub id that could not be fetched."""
    head = f"cannot load the in-process model {model!r}: "
    local = is_local_path(model)
    lacks = folder_lacks(model_folder(model), diffusers=False) if local else None
    if lacks is not None:
        return f"{head}{lacks}; point it at a folder with the whole model (one saved by save_pretrained)"
    if "ignore_mismatched_sizes" in str(exc):  # the tensors are listed in the report transformers logged
        report = "\n".join(_ANSI.sub("", record.getMessage()) for record in held)
        rows = _MISMATCH.findall(report)
        if rows:
            name, weights, config = rows[0]
            more = f"; and {len(rows) - 1} more" if len(rows) > 1 else ""
            return (
                f"{head}its weights do not fit its config.json ({name}: {weights} in the weights, {config} in the "
                f"config{more})"
            )
        return head + "its weights do not fit its config.json"
    text = head + _one_line(exc)
    if isinstance(exc, OSError) and not local:
        text += f"; download it first (hf download {model}) or set the model to a local folder"
    return text


def _load_model(model: str, dtype: Any, device_map: str | None) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"dtype": dtype, **({"device_map": device_map} if device_map else {})}
    try:
        return AutoModelForImageTextToText.from_pretrained(model, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)  # a text-only model: no images


def _load_processor(model: str) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        return _image_only_processor(model)


def _image_only_processor(model: str) -> Any:
    """The model's processor without its video processor, which needs torchvision; gems only sends images."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(AutoConfig.from_pretrained(model).model_type)
    base = getattr(transformers, str(name), None)
    if base is None:
        raise ImportError(f"no processor for {model} works without torchvision; install torchvision")

    class ImageOnly(base):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = base.get_processor_dict(model)[0].get("chat_template") or tokenizer.chat_template
    image_processor = AutoImageProcessor.from_pretrained(model)
    return ImageOnly(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=template)


# ---- LangChain messages <-> a chat template's messages ----


def _image(url: str) -> Any:
    from PIL import Image

    if not url.startswith("data:"):
        raise LocalModelError(f"the in-process model takes images as data URLs, not {url[:40]!r}")
    try:
        data = base64.b64decode(url.partition(",")[2], validate=False)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, binascii.Error) as exc:
        raise LocalModelError(f"an image sent to the in-process model cannot be read: {_one_line(exc)}") from exc
    return image.convert("RGB")


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content or []:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif part.get("type") == "text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
            parts.append({"type": "image", "image": _image(url)})
        elif part.get("type") == "image" and (part.get("base64") or part.get("data")):
            mime = part.get("mime_type") or "image/png"
            parts.append({"type": "image", "image": _image(f"data:{mime};base64,{part.get('base64') or part['data']}")})
    return parts


def hf_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as a chat template takes them: text as a string, a list only where images are."""
    roles = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant", ToolMessage: "tool"}
    out: list[dict[str, Any]] = []
    for message in messages:
        role = next((r for cls, r in roles.items() if isinstance(message, cls)), None)
        if role is None:
            role = message.role if isinstance(message, ChatMessage) else "user"
        parts = _parts(message.content)
        has_image = any(p["type"] == "image" for p in parts)
        entry: dict[str, Any] = {"role": role, "content": parts if has_image else "".join(p["text"] for p in parts)}
        if isinstance(message, AIMessage) and message.tool_calls:
            entry["tool_calls"] = [
                {"type": "function", "id": c["id"], "function": {"name": c["name"], "arguments": c["args"]}}
                for c in message.tool_calls
            ]
        if isinstance(message, ToolMessage):
            entry.update({"name": message.name, "tool_call_id": message.tool_call_id})
        out.append(entry)
    return out


_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Qwen, Hermes) from the answer."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in _TOOL_CALL_RE.findall(text):
        call_id = f"call_{uuid.uuid4().hex[:16]}"
        try:
            data = json.loads(raw)
            args = data.get("arguments", {})
            args = json.loads(args) if isinstance(args, str) else args
            if not isinstance(data.get("name"), str) or not isinstance(args, dict):
                raise ValueError("a tool call needs a name and an object of arguments")
            calls.append(tool_call(name=data["name"], args=args, id=call_id))
        except (ValueError, AttributeError) as exc:
            invalid.append(invalid_tool_call(name=None, args=raw, id=call_id, error=_one_line(exc)))
    return _TOOL_CALL_RE.sub("", text).strip(), calls, invalid


def split_reasoning(text: str, opened: bool) -> tuple[str, str | None]:
    """(answer, reasoning) of a reply that may start with a `<think>` block; `opened`: the prompt opened it."""
    text = "<think>" + text if opened else text
    match = re.match(r"\s*<think>(.*?)(?:</think>|$)(.*)", text, re.DOTALL)
    if match is None:
        return text.strip(), None
    return match.group(2).strip(), match.group(1).strip() or None


@functools.cache
def _stop_when_type() -> type:
    from transformers import StoppingCriteria

    class StopWhen(StoppingCriteria):
        """Ends generation at the next token once the event is set (the awaiting call was cancelled)."""

        def __init__(self, event: threading.Event):
            self.event = event

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhen


class TransformersChat(BaseChatModel):
    """A LangChain chat model over `load_vlm`: the same messages, tools and replies as an OpenAI-compatible server.

    `temperature` None samples as the checkpoint's generation config says, 0 is greedy; `max_tokens` bounds new
    tokens. Tools bind through the chat template (a template without tools refuses them with status 501).
    """

    model_name: str
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    template_kwargs: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: MLLMSettings) -> TransformersChat:
        kwargs = (settings.extra_body or {}).get("chat_template_kwargs") or {}
        return cls(
            model_name=settings.model,
            dtype=settings.dtype,
            device=settings.device,
            device_map=settings.device_map,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            template_kwargs=dict(kwargs),
        )

    @property
    def _llm_type(self) -> str:
        return "gems-transformers"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def vlm(self) -> LocalVLM:
        """The loaded model (loads it on first use: minutes for a first download)."""
        return load_vlm(self.model_name, self.dtype, self.device, self.device_map)

    async def aload(self) -> LocalVLM:
        """Load off the event loop."""
        return await asyncio.to_thread(self.vlm)

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        vlm = self.vlm()
        return vlm.run(lambda: self.complete(vlm, messages, kwargs.get("tools"), threading.Event(), stop))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        vlm = await self.aload()
        cancel = threading.Event()
        try:
            return await vlm.arun(lambda: self.complete(vlm, messages, kwargs.get("tools"), cancel, stop))
        except asyncio.CancelledError:
            cancel.set()  # a thread cannot be killed, but generate stops at its next token
            raise

    def complete(
        self,
        vlm: LocalVLM,
        messages: list[BaseMessage],
        tools: list[dict[str, Any]] | None,
        cancel: threading.Event,
        stop: list[str] | None = None,
    ) -> ChatResult:
        """One reply, on the model's thread."""
        import torch

        template_kwargs = dict(self.template_kwargs)
        if tools:
            if not vlm.renders_tools:
                raise LocalModelError(
                    f"the chat template of the in-process model {self.model_name} has no tool calling", 501
                )
            template_kwargs["tools"] = tools
        chat = hf_messages(messages)
        if any(isinstance(m["content"], list) for m in chat) and not hasattr(vlm.processor, "image_processor"):
            raise LocalModelError(f"the in-process model {self.model_name} takes no images; use a vision model")
        if cancel.is_set():
            raise LocalModelError("the call was cancelled before it started")
        inputs = vlm.processor.apply_chat_template(
            chat, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt", **template_kwargs
        ).to(vlm.device)
        prompt_len = int(inputs["input_ids"].shape[1])
        tail = vlm.tokenizer.decode(inputs["input_ids"][0, -8:].tolist())
        limit = self.max_tokens or DEFAULT_MAX_NEW_TOKENS
        options: dict[str, Any] = {"max_new_tokens": limit}
        if self.temperature == 0:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        elif self.temperature is not None:
            options.update(do_sample=True, temperature=self.temperature)
        if vlm.tokenizer.pad_token_id is None and vlm.model.generation_config.pad_token_id is None:
            options["pad_token_id"] = vlm.tokenizer.eos_token_id
        if stop:
            options.update(stop_strings=list(stop), tokenizer=vlm.tokenizer)
        with torch.inference_mode():
            out = vlm.model.generate(**inputs, **options, stopping_criteria=[_stop_when_type()(cancel)])
        new = out[0, prompt_len:].tolist()
        text = vlm.tokenizer.decode(new, skip_special_tokens=True)
        for marker in stop or []:  # as servers do: the stop string itself is not part of the answer
            text = text.split(marker, 1)[0]
        answer, reasoning = split_reasoning(text, tail.rfind("<think>") > tail.rfind("</think>"))
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        if tools:
            answer, calls, invalid = parse_tool_calls(answer)
        message = AIMessage(
            content=answer,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            additional_kwargs={"reasoning_content": reasoning} if reasoning else {},
            usage_metadata={
                "input_tokens": prompt_len,
                "output_tokens": len(new),
                "total_tokens": prompt_len + len(new),
            },
            response_metadata={
                "model_name": self.model_name,
                "finish_reason": "cancelled" if cancel.is_set() else "length" if len(new) >= limit else "stop",
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

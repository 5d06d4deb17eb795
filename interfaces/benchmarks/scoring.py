"""Scorers for `gems bench`: GenEval2's Soft-TIFA exactly as its official code computes it, and the loop's self-check.

- `soft-tifa` (GenEval2's metric, facebookresearch/GenEval2 `evaluation.py`): for each [question, expected answer]
  atom, the judge gets one user turn, the image first and then `"{question} Answer in one word."`, no system
  message, and generates one token. The atom's score is the sum, over a fixed list of answer strings, of the
  probability of each string's first token: `Yes`, `yes`, ` yes`, ` Yes` for every question, or for "How many"
  questions the expected word, capitalised, with a leading space, and its digit with and without a space. Nothing
  is case-folded, de-duplicated, clipped or rounded. First tokens come from the official judge's tokenizer: a table
  computed from Qwen2's byte-level BPE (`first_tokens.py`; `eleven` starts with `ele`, `" 2"` with a lone space),
  or `judge.tokenizer` for another judge. A prompt's `soft_tifa_am` is the mean of its atoms and
  `soft_tifa_gm` their geometric mean (0 when any atom is 0); a dataset's score is 100 x the mean over prompts.
  Through an OpenAI-compatible endpoint only the top-k logprobs are visible (`judge.top_logprobs`): a token outside
  them counts 0 where the official script, reading the whole vocabulary, would add a small probability. With
  `judge.backend: transformers` the judge runs in this process and the computation is evaluation.py's own: softmax
  over the whole vocabulary, first tokens by the model's tokenizer (`LocalSoftTIFAScorer`).
- `verifier`: the loop's own verdict on its final image (criteria passed / total). It is the loop grading itself,
  labelled "self-check (not the benchmark's metric)" wherever it is shown.
"""

from __future__ import annotations

import base64
import io
import math
import os
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from gems.configs import ConfigError, GemsSettings, JudgeSettings
from gems.configs.errors import short, shown_url
from gems.interfaces.benchmarks.datasets import BenchPrompt
from gems.interfaces.benchmarks.first_tokens import QWEN3_VL_FIRST_TOKENS
from gems.nodes.local_vlm import LocalModelError, LocalVLM, load_vlm

# evaluation.py's return_numeric_string: exactly these lower-case words, anything else maps to "other".
NUMBER_DIGITS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
YES_ANSWERS = ("Yes", "yes", " yes", " Yes")
JUDGE_SUFFIX = " Answer in one word."
SELF_CHECK_LABEL = "self-check (not the benchmark's metric)"
SOFT_TIFA_LABEL = "Soft-TIFA (GenEval2's official metric)"


class ScorerError(ConfigError):
    """A scorer cannot run for this bench (no judge, no logprobs, no atoms); raised before the first prompt."""


class Scorer(Protocol):
    name: str
    label: str

    def check(self) -> None: ...

    def score(self, item: BenchPrompt, record: dict[str, Any], image_path: Path) -> dict[str, Any]: ...


# ---- Soft-TIFA arithmetic (pure, tested against the official formulas) ----


def answer_strings(question: str, expected: str) -> list[str]:
    """The answer list evaluation.py builds for one atom (duplicates kept: the official sums each entry)."""
    if question.startswith("How many"):
        digit = NUMBER_DIGITS.get(expected, "other")
        return [expected, expected.capitalize(), " " + expected, " " + expected.capitalize(), digit, " " + digit]
    return list(YES_ANSWERS)


def qwen_first_token(text: str) -> str:
    """The first token of `text` under the official judge's tokenizer (`"eleven"` -> `"ele"`, `" 2"` -> `" "`).

    Raises:
        KeyError: an answer string outside the table (see `missing_first_tokens`).
    """
    return QWEN3_VL_FIRST_TOKENS[text][1]


def missing_first_tokens(items: list[BenchPrompt]) -> list[tuple[str, str]]:
    """(prompt id, expected answer) of each atom with an answer string the first-token table does not hold."""
    return [
        (item.id, expected)
        for item in items
        for question, expected in item.atoms
        if any(a not in QWEN3_VL_FIRST_TOKENS for a in answer_strings(question, expected))
    ]


# Files a tokenizer folder holds (any one of them); the hub cache is asked for the first two.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads HF_HUB_OFFLINE


def tokenizer_problem(tokenizer: str) -> str | None:
    """Why `judge.tokenizer` cannot load, as far as can be told without loading it (one line); None if it may."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    where = "give the folder of the judge's tokenizer or its Hugging Face hub id (such as Qwen/Qwen3-VL-8B-Instruct)"
    path = Path(tokenizer).expanduser()
    if path.is_file():
        return f"judge.tokenizer {tokenizer} is a file, not a folder; {where}"
    if path.is_dir():
        if any((path / name).is_file() for name in TOKENIZER_FILES):
            return None
        return f"judge.tokenizer {tokenizer} is a folder with no tokenizer in it (no tokenizer.json); {where}"
    try:
        validate_repo_id(tokenizer)
    except HFValidationError:
        return f"judge.tokenizer {tokenizer}: no such folder, and not a Hugging Face hub id; {where}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE
    if offline and not any(isinstance(try_to_load_from_cache(tokenizer, n), str) for n in TOKENIZER_FILES[:2]):
        return (
            f"judge.tokenizer {tokenizer} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it "
            f"first (hf download {tokenizer}) or set judge.tokenizer to a folder that holds it"
        )
    return None


@cache
def _hf_first_token(tokenizer: str) -> Any:
    """Raises ScorerError (one line naming judge.tokenizer) when the tokenizer cannot be loaded."""
    problem = tokenizer_problem(tokenizer)
    if problem:
        raise ScorerError(problem)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as exc:
        raise ScorerError(
            f"judge.tokenizer {tokenizer} could not be loaded: {type(exc).__name__}: {short(str(exc), 200)}"
        ) from None
    # As the official script: the first id of encode(answer), special tokens as the tokenizer adds them.
    return lambda text: tok.decode([tok.encode(text)[0]])


def first_token_fn(tokenizer: str | None) -> Any:
    return _hf_first_token(tokenizer) if tokenizer else qwen_first_token


def token_probability(top_logprobs: list[dict[str, Any]], token: str) -> float:
    """exp(logprob) of the first entry whose token string is exactly `token`; 0 when the top-k does not show it."""
    for entry in top_logprobs:
        if entry.get("token") == token:
            return math.exp(entry["logprob"])
    return 0.0


def atom_probability(top_logprobs: list[dict[str, Any]], question: str, expected: str, first_token: Any) -> float:
    """One atom's Soft-TIFA score: the summed probability of each answer string's first token."""
    return sum(token_probability(top_logprobs, first_token(a)) for a in answer_strings(question, expected))


def geometric_mean(values: list[float]) -> float:
    """scipy.stats.gmean for non-negative values: exp(mean(log)), 0 when any value is 0."""
    if not values:
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ---- scorers ----


class VerifierScorer:
    """The loop's own final pass rate: a self-check, never the benchmark's metric."""

    name = "verifier"
    label = SELF_CHECK_LABEL

    def check(self) -> None:
        return None

    def score(self, item: BenchPrompt, record: dict[str, Any], image_path: Path) -> dict[str, Any]:
        final = record.get("final") or {}
        total = final.get("total") or 0
        return {"self_check": (final.get("passed") or 0) / total if total else None}


def _png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


class SoftTIFAScorer:
    """GenEval2's Soft-TIFA through an OpenAI-compatible VQA endpoint that returns logprobs."""

    name = "soft-tifa"
    label = SOFT_TIFA_LABEL

    def __init__(self, judge: JudgeSettings, concurrency: int = 8):
        from langchain_openai import ChatOpenAI

        self.judge = judge
        self.concurrency = concurrency
        self.first_token = first_token_fn(judge.tokenizer)
        self.chat = ChatOpenAI(
            model=judge.model,
            base_url=judge.base_url,
            api_key=SecretStr(judge.resolved_api_key()),
            timeout=judge.timeout_s,
            max_retries=judge.max_retries,
            use_responses_api=False,
            temperature=0,
            max_completion_tokens=1,
            logprobs=True,
            top_logprobs=judge.top_logprobs,
            extra_body=judge.extra_body or None,
        )

    def _messages(self, data_url: str, question: str) -> list[Any]:
        from langchain_core.messages import HumanMessage

        content: list[str | dict[Any, Any]] = [
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": question + JUDGE_SUFFIX},
        ]
        return [HumanMessage(content=content)]

    def _top(self, reply: Any) -> list[dict[str, Any]]:
        content = (reply.response_metadata.get("logprobs") or {}).get("content") or []
        if not content:
            raise ScorerError(
                f"the judge {self.judge.model} at {shown_url(self.judge.base_url)} returned no logprobs; Soft-TIFA "
                "needs an endpoint that returns them (vLLM, SGLang and OpenAI do with logprobs=true)"
            )
        return content[0].get("top_logprobs") or [content[0]]

    def check(self) -> None:
        """One request on a small grey image: the judge answers, with logprobs (fails before the first prompt)."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="PNG")
        try:
            reply = self.chat.invoke(self._messages(_png_data_url(buf.getvalue()), "Is this image grey?"))
        except ScorerError:
            raise
        except Exception as exc:
            raise ScorerError(
                f"the judge {self.judge.model} at {shown_url(self.judge.base_url)} did not answer: "
                f"{type(exc).__name__}: {short(str(exc), 200)}"
            ) from None
        self._top(reply)

    def score(self, item: BenchPrompt, record: dict[str, Any], image_path: Path) -> dict[str, Any]:
        # The image file as it is: the official script hands the file to the judge's processor unresized.
        data_url = _png_data_url(image_path.read_bytes())
        requests = [self._messages(data_url, question) for question, _ in item.atoms]
        replies = self.chat.batch(requests, config={"max_concurrency": self.concurrency})  # type: ignore[arg-type]
        atoms: list[dict[str, Any]] = []
        usage = {"judge_calls": len(replies), "judge_input_tokens": 0, "judge_output_tokens": 0}
        for (question, expected), reply in zip(item.atoms, replies, strict=True):
            top = self._top(reply)
            p = atom_probability(top, question, expected, self.first_token)
            atoms.append({"question": question, "expected": expected, "p": p, "argmax": top[0].get("token")})
            meta = getattr(reply, "usage_metadata", None) or {}
            usage["judge_input_tokens"] += int(meta.get("input_tokens", 0))
            usage["judge_output_tokens"] += int(meta.get("output_tokens", 0))
        probs = [float(a["p"]) for a in atoms]
        return {"am": sum(probs) / len(probs), "gm": geometric_mean(probs), "atoms": atoms, "cost": usage}


class LocalSoftTIFAScorer:
    """GenEval2's Soft-TIFA with the judge in this process, computed as evaluation.py does.

    Per atom: the image file and `"{question} Answer in one word."` through the processor's chat template, one
    greedy token, softmax over the whole vocabulary, and the sum of the probabilities of each answer string's
    first token `tokenizer.encode(answer)[0]`, added in evaluation.py's order. `judge.share_image` encodes the image
    once for all its atoms (see `LocalVLM.next_token_distributions`).
    """

    name = "soft-tifa"
    label = SOFT_TIFA_LABEL

    def __init__(self, judge: JudgeSettings):
        self.judge = judge
        self._first_ids: dict[str, int] = {}

    def _vlm(self) -> LocalVLM:
        j = self.judge
        try:
            return load_vlm(j.model, j.dtype, j.device, j.device_map)
        except LocalModelError as exc:
            raise ScorerError(f"the judge: {exc}") from None

    def first_token_id(self, vlm: LocalVLM, answer: str) -> int:
        if answer not in self._first_ids:
            self._first_ids[answer] = int(vlm.tokenizer.encode(answer)[0])
        return self._first_ids[answer]

    def atoms(self, image: Any, atoms: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], int]:
        """Each atom's question, expected answer, probability `p` and argmax token; and the tokens the model read.

        `image`: a file path (as evaluation.py passes it) or a PIL image.
        """
        vlm = self._vlm()
        prompts = [question + JUDGE_SUFFIX for question, _ in atoms]
        dists, tokens = vlm.run(lambda: vlm.next_token_distributions(image, prompts, self.judge.share_image))
        scored = []
        for (question, expected), probs in zip(atoms, dists, strict=True):
            p = 0.0
            for answer in answer_strings(question, expected):
                p += probs[self.first_token_id(vlm, answer)].item()
            argmax = vlm.tokenizer.decode([int(probs.argmax())])
            scored.append({"question": question, "expected": expected, "p": p, "argmax": argmax})
        return scored, tokens

    def check(self) -> None:
        """Load the judge and ask one question about a small grey image (fails before the first prompt)."""
        from PIL import Image

        try:
            self.atoms(Image.new("RGB", (64, 64), (128, 128, 128)), [("Is this image grey?", "yes")])
        except ScorerError:
            raise
        except Exception as exc:
            raise ScorerError(
                f"the in-process judge {self.judge.model} did not answer: {type(exc).__name__}: {short(str(exc), 200)}"
            ) from None

    def score(self, item: BenchPrompt, record: dict[str, Any], image_path: Path) -> dict[str, Any]:
        atoms, tokens = self.atoms(str(image_path), list(item.atoms))
        probs = [float(a["p"]) for a in atoms]
        usage = {"judge_calls": len(atoms), "judge_input_tokens": tokens, "judge_output_tokens": len(atoms)}
        return {"am": sum(probs) / len(probs), "gm": geometric_mean(probs), "atoms": atoms, "cost": usage}


def judge_note(judge: dict[str, Any] | None) -> str | None:
    """What the judge could see, for reports: the whole vocabulary in this process, or an endpoint's top-k."""
    if not judge:
        return None
    model = judge.get("model")
    if judge.get("backend") == "transformers":
        return (
            f"{model} in this process (transformers): every answer token's probability over the whole vocabulary, "
            "as evaluation.py"
        )
    return (
        f"{model} at {shown_url(judge.get('base_url'))}: only the top-{judge.get('top_logprobs')} logprobs of the "
        "answer token are visible; an answer token outside them counts 0 (evaluation.py reads the whole vocabulary)"
    )


def judge_warning(settings: GemsSettings) -> str | None:
    """A warning when the judge is the loop's own verifier (it would grade its own homework)."""
    judge, mllm = settings.judge, settings.mllm
    if judge is None or judge.model != mllm.model or judge.backend != mllm.backend:
        return None
    if judge.backend == "transformers" or judge.base_url == mllm.base_url:
        where = "in this process" if judge.backend == "transformers" else f"at {shown_url(judge.base_url)}"
        return (
            f"warning: the judge ({judge.model} {where}) is also the loop's verifier; "
            "scores will be optimistic. Configure a different judge for numbers you publish."
        )
    return None


SCORERS = ("auto", "soft-tifa", "verifier", "none")
VERIFIED_METHODS = ("search", "loop", "gems")  # the methods whose final image has criteria and verdicts


def resolve_scorer(name: str, settings: GemsSettings, dataset: str, method: str, items: list[BenchPrompt]) -> str:
    """Which scorer `name` means for this bench, or a ScorerError saying why it cannot run.

    `auto` is Soft-TIFA for GenEval2 with a judge; GenEval2 without a judge is refused for the verifier-based
    methods (their only number would be the loop grading itself) unless `--scorer verifier` asks for it; elsewhere
    `auto` is the self-check for those methods and none for original/rewrite.
    """
    if name not in SCORERS:
        raise ScorerError(f"unknown scorer {name!r}; use one of: {', '.join(SCORERS)}")
    if name == "auto":
        if dataset == "geneval2" and settings.judge is not None:
            name = "soft-tifa"
        elif dataset == "geneval2" and method in VERIFIED_METHODS:
            raise ScorerError(
                "GenEval2's metric is Soft-TIFA and needs a judge: add a judge: section (base_url, model) to the "
                "config, or pass --scorer verifier for a self-check (not the benchmark's metric) or --scorer none"
            )
        else:
            name = "verifier" if method in VERIFIED_METHODS else "none"
    if name == "soft-tifa":
        if settings.judge is None:
            raise ScorerError("the soft-tifa scorer needs a judge: section in the config (base_url, model)")
        missing = [item.id for item in items if not item.atoms]
        if missing:
            raise ScorerError(
                f"the soft-tifa scorer needs [question, answer] atoms (GenEval2's vqa_list); "
                f"{len(missing)} prompt(s) have none, e.g. {missing[0]}"
            )
        # The in-process judge reads first tokens from its own tokenizer; an endpoint's needs the table.
        table = settings.judge.tokenizer is None and settings.judge.backend == "openai"
        tokenizer = settings.judge.tokenizer if settings.judge.backend == "openai" else None
        problem = tokenizer_problem(tokenizer) if tokenizer else None
        if problem:  # before the run folder is touched
            raise ScorerError(problem)
        unknown = missing_first_tokens(items) if table else []
        if unknown:
            raise ScorerError(
                f"prompt {unknown[0][0]}'s answer {unknown[0][1]!r} has no entry in gems' table of the official "
                "judge's first tokens; set judge.tokenizer to the judge's tokenizer (hub id or folder)"
            )
    if name == "verifier" and method not in VERIFIED_METHODS:
        raise ScorerError(f"the verifier scorer needs criteria; method {method!r} has none (use --scorer none)")
    return name


def make_scorer(name: str, settings: GemsSettings) -> Scorer | None:
    """Build a resolved scorer (see `resolve_scorer`)."""
    if name == "none":
        return None
    if name == "verifier":
        return VerifierScorer()
    assert settings.judge is not None  # resolve_scorer checked it
    if settings.judge.backend == "transformers":
        return LocalSoftTIFAScorer(settings.judge)
    return SoftTIFAScorer(settings.judge)

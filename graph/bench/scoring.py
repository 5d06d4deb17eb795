"""Scorers for `gems bench`. Pluggable: anything with `name` and `score(item, record, image_path) -> dict | None`.

- `soft-tifa` (GenEval2's metric): a VQA model answers each [question, expected answer] atom about the image with
  one token; the atom's score is the probability the model gives the expected answer (from the endpoint's
  logprobs). A prompt's scores are the atoms' arithmetic mean (AM) and geometric mean (GM, what papers report).
  The judge endpoint is `judge` in the config, separate from the loop's `mllm`.
- `verifier`: the loop's own verdict on its final image (criteria passed / total). Free, but it is the loop grading
  itself: use it for smoke runs, not for numbers to publish.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Protocol

from gems.configs import GemsSettings, MLLMSettings
from gems.graph.bench.datasets import BenchPrompt

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
JUDGE_SYSTEM = "Answer the question about the image with a single word or number."


class Scorer(Protocol):
    name: str

    def score(self, item: BenchPrompt, record: dict[str, Any], image_path: Path) -> dict[str, Any] | None: ...


def normalise_answer(text: str) -> str:
    word = re.sub(r"[^\w]", "", text.strip().lower())
    return NUMBER_WORDS.get(word, word)


def answer_probability(top_logprobs: list[dict[str, Any]], expected: str) -> float:
    """Probability mass the first generated token puts on the expected answer (case, spaces, 'two'/'2' folded)."""
    want = normalise_answer(expected)
    return min(1.0, sum(math.exp(t["logprob"]) for t in top_logprobs if normalise_answer(t["token"]) == want))


def geometric_mean(values: list[float]) -> float:
    if not values or any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


class VerifierScorer:
    """The loop's own final pass rate."""

    name = "verifier"

    def score(self, item: BenchPrompt, record: dict[str, Any], image_path: Path) -> dict[str, Any] | None:
        final = record.get("final") or {}
        total = final.get("total") or 0
        return {"score": (final.get("passed") or 0) / total} if total else None


class SoftTIFAScorer:
    """GenEval2's Soft-TIFA through an OpenAI-compatible VQA endpoint that returns logprobs."""

    name = "soft-tifa"

    def __init__(self, judge: MLLMSettings, top_logprobs: int = 20):
        from langchain_openai import ChatOpenAI

        self.judge = judge
        self.chat = ChatOpenAI(
            model=judge.model,
            base_url=judge.base_url,
            api_key=judge.resolved_api_key(),
            timeout=judge.timeout_s,
            max_retries=judge.max_retries,
            use_responses_api=False,
            temperature=0,
            max_completion_tokens=1,
            logprobs=True,
            top_logprobs=top_logprobs,
        )

    def atom(self, data_url: str, question: str, expected: str) -> float:
        from langchain_core.messages import HumanMessage, SystemMessage

        message = HumanMessage(
            content=[{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_url}}]
        )
        reply = self.chat.invoke([SystemMessage(content=JUDGE_SYSTEM), message])
        content = (reply.response_metadata.get("logprobs") or {}).get("content") or []
        if not content:
            raise RuntimeError(f"judge endpoint {self.judge.base_url} returned no logprobs; it must support them")
        return answer_probability(content[0].get("top_logprobs") or [content[0]], expected)

    def score(self, item: BenchPrompt, record: dict[str, Any], image_path: Path) -> dict[str, Any] | None:
        if not item.atoms:
            return None
        from gems.memory.artifacts import ArtifactStore

        store = ArtifactStore(image_path.parent)
        data_url = store.data_url(image_path.stem, self.judge.image_max_side)
        probs = [round(self.atom(data_url, q, a), 6) for q, a in item.atoms]
        atoms = [{"question": q, "expected": a, "p": p} for (q, a), p in zip(item.atoms, probs, strict=True)]
        gm = geometric_mean(probs)
        return {"score": gm, "am": sum(probs) / len(probs), "gm": gm, "atoms": atoms}


def judge_warning(settings: GemsSettings) -> str | None:
    """A warning when the judge is the loop's own verifier (it would grade its own homework)."""
    judge = settings.judge
    if judge is not None and judge.model == settings.mllm.model and judge.base_url == settings.mllm.base_url:
        return (
            f"warning: the judge ({judge.model} at {judge.base_url}) is also the loop's verifier; "
            "scores will be optimistic. Configure a different judge for numbers you publish."
        )
    return None


def make_scorer(name: str, settings: GemsSettings, dataset: str) -> Scorer | None:
    """Pick a scorer: `auto` is Soft-TIFA for GenEval2 when a judge is configured, else the loop's own verdict."""
    from gems.configs import ConfigError

    if name == "none":
        return None
    if name == "auto":
        name = "soft-tifa" if dataset == "geneval2" and settings.judge is not None else "verifier"
    if name == "verifier":
        return VerifierScorer()
    if name == "soft-tifa":
        if settings.judge is None:
            raise ConfigError("the soft-tifa scorer needs a judge section in the config (base_url, model)")
        return SoftTIFAScorer(settings.judge)
    raise ConfigError(f"unknown scorer {name!r}; use auto, soft-tifa, verifier or none")

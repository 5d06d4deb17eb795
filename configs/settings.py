"""What a gems run is configured by: `GemsSettings` (every section, every field defaulted and described) and
`RunOptions`, the part a client of a shared server may set per run. Each limit is defined once, here.

`GemsSettings` is the graph's `context_schema` for trusted callers, `RunOptions` for the served graph; how settings
are read (YAML, `GEMS_*`, a run's context) is `gems.configs.loading`. Unknown keys are errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gems.configs.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ".../v1/" and ".../v1" are one endpoint: one spelling, so configs that differ only there compare equal.
BaseURL = Annotated[str, AfterValidator(lambda url: url.rstrip("/"))]


def _named(name: str) -> str:
    if not name.strip():
        raise ValueError("is empty; name a model (a hub id, a local folder or the server's model name)")
    return name.strip()


# A model name is never blank: "" would send `model: ""` to a server, or read the current folder as a model.
ModelName = Annotated[str, AfterValidator(_named)]


class MLLMSettings(_Strict):
    """The OpenAI-compatible chat endpoint that plays every LLM/MLLM role."""

    base_url: BaseURL = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL, ending in /v1")
    model: ModelName = Field("Qwen/Qwen3-VL-30B-A3B-Instruct", description="model name the server expects")
    api_key: SecretStr | None = Field(None, description="falls back to GEMS_MLLM_API_KEY, then OPENAI_API_KEY")
    temperature: float | None = Field(None, ge=0, le=2, description="unset: the server's default (paper)")
    max_tokens: int | None = Field(8192, ge=1, description="completion budget per call (reasoning included)")
    timeout_s: float = Field(
        300.0, gt=0, description="wall-clock limit of one request, however slowly the answer arrives (each retry anew)"
    )
    max_retries: int = Field(3, ge=0, le=10, description="retries with backoff on 408/409/429/5xx/connection")
    image_max_side: int = Field(1024, ge=64, description="images are downscaled to this before sending")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="extra JSON for every request, e.g. chat_template_kwargs"
    )
    backend: Literal["openai", "transformers"] = Field(
        "openai",
        description="openai: an OpenAI-compatible server at base_url; transformers: the model runs in this process "
        "(hub id or local folder in model; extra_body.chat_template_kwargs go to its chat template)",
    )
    device: str = Field("auto", description="transformers: auto (CUDA when present, else MPS, else CPU), cpu, cuda:1")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="transformers: auto is bfloat16 on CUDA (float16 without bf16 support), float32 on CPU"
    )
    device_map: str | None = Field(
        None,
        description="transformers: accelerate placement instead of device, e.g. auto (fills the GPUs, then CPU "
        "memory) when the model shares a GPU with the generator",
    )

    def resolved_api_key(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get("GEMS_MLLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"


class JudgeSettings(MLLMSettings):
    """`gems bench`: the VQA model that scores images with Soft-TIFA, kept apart from the loop's `mllm`."""

    model: ModelName = Field("Qwen/Qwen3-VL-8B-Instruct", description="GenEval2's official judge")
    top_logprobs: int = Field(
        20,
        ge=1,
        le=1000,
        description="logprobs requested for the answer token: the most the server allows (OpenAI and vLLM's "
        "default cap: 20; vLLM raises it with --max-logprobs); tokens outside the top-k count as probability 0",
    )
    tokenizer: str | None = Field(
        None,
        description="hub id or folder of the judge's tokenizer, to take each answer's first token exactly as "
        "GenEval2's evaluation.py does; unset: Qwen-style pre-tokenization (the official judge is Qwen3-VL)",
    )
    share_image: bool = Field(
        True,
        description="transformers backend: encode an image once for all its questions (a cached prefix, the "
        "questions batched); false: evaluation.py's one whole pass per question",
    )


GeneratorBackend = Literal["diffusers", "http", "openai"]
EditorBackend = Literal["none", "diffusers", "openai", "generator"]


class ImageModelSettings(_Strict):
    """What a generator and an editor share: the model, where it runs, and how it samples."""

    model: ModelName | None = Field(None, description="diffusers: hub id or local folder; openai: model name")
    url: str | None = Field(None, description="http: generator URL; openai: base URL ending in /v1")
    api_key: SecretStr | None = Field(None, description="openai backend; falls back to OPENAI_API_KEY")
    width: int | None = Field(None, ge=16, le=4096)
    height: int | None = Field(None, ge=16, le=4096)
    steps: int | None = Field(None, ge=1, le=500, description="num_inference_steps")
    guidance_scale: float | None = Field(None, ge=0)
    negative_prompt: str | None = None
    call_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra pipeline/request arguments")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = Field("auto", description="auto (CUDA when present, else MPS, else CPU), cpu, cuda, cuda:1")
    cpu_offload: bool = Field(False, description="diffusers enable_model_cpu_offload for small GPUs")
    timeout_s: float = Field(600.0, gt=0, description="wall-clock limit of one remote image request (each retry anew)")
    max_retries: int = Field(2, ge=0, le=10, description="retries on 5xx/timeouts for remote backends")

    def resolved_api_key(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get("GEMS_GENERATOR_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"


class GeneratorSettings(ImageModelSettings):
    """Which text-to-image backend renders, and with what parameters."""

    backend: GeneratorBackend = "diffusers"
    preset: str | None = Field(
        "z-image-turbo", description="diffusers defaults: z-image-turbo, qwen-image-2512, sd-turbo (CPU)"
    )

    @property
    def model_label(self) -> str:
        """What produced the images, for lessons and reports: the model id, else the preset name."""
        return self.model or self.preset or ""


class EditorSettings(ImageModelSettings):
    """The image editor for `loop.refine_mode: edit | auto`: it changes an earlier image by an instruction.

    `generator` edits with the generator's own backend (a diffusers pipeline that takes an input image, or the
    generator's OpenAI-compatible server at `/v1/images/edits`); fields set here override the generator's.
    """

    backend: EditorBackend = Field("none", description="none, diffusers, openai (/v1/images/edits) or generator")
    preset: str | None = Field(None, description="diffusers defaults: qwen-image-edit-2511, flux-kontext")


RefineMode = Literal["regenerate", "edit", "auto"]
NO_EDITOR = "loop.refine_mode {mode} needs an editor: set editor.backend to diffusers, openai or generator"


# The limits of a run, wherever its options come from (a config file, a server's client, a state edit).
MAX_ROUNDS = 50
MAX_CANDIDATES = 16  # images per round
MAX_CRITERIA = 100  # criteria checked per image (each one verifier call)
# A tenant (an API key's name) is a store namespace label, a folder and a URL part: no '.', which LangGraph's
# store refuses in labels, and no '/'.
TENANT_PATTERN = r"[A-Za-z0-9_-]{1,64}"
Rounds = Annotated[int, Field(ge=1, le=MAX_ROUNDS, description="generator rounds before returning the best image")]
Candidates = Annotated[int, Field(ge=1, le=MAX_CANDIDATES, description="candidates per round; the best one is kept")]
Seed = Annotated[int, Field(ge=0, lt=2**63, description="base seed; round r candidate c uses seed+(r-1)*n+c")]


class LoopSettings(_Strict):
    """The GEMS loop; defaults reproduce the reference method."""

    max_rounds: int = Field(5, ge=1, le=MAX_ROUNDS, description="generator rounds before returning the best image")
    images_per_round: int = Field(1, ge=1, le=MAX_CANDIDATES, description="candidates per round; the best one is kept")
    experience_max_words: int = Field(100, ge=10, le=1000)
    verifier_concurrency: int = Field(10, ge=1, le=256, description="parallel verifier calls")
    max_criteria: int | None = Field(
        24, ge=1, le=MAX_CRITERIA,
        description=f"cap on decomposed criteria (each is one verifier call per round); null = {MAX_CRITERIA}",
    )  # fmt: skip
    max_prompt_chars: int = Field(
        4000, ge=100, le=100_000, description="longer planner/refiner prompts are cut at a word boundary"
    )
    seed: Seed | None = None
    human_review: bool = Field(
        False, description="pause before the first generation so a person can edit the criteria or first prompt"
    )
    refine_mode: RefineMode = Field(
        "regenerate",
        description="regenerate: a new prompt every round (paper); edit: edit an earlier image by an instruction "
        "that names what failed; auto: the refiner chooses per round (needs an editor)",
    )
    edit_base: Literal["best", "last"] = Field(
        "best", description="the image an edit starts from: the best round so far, or the last one"
    )
    verify: Literal["per-criterion", "batched"] = Field(
        "per-criterion",
        description="per-criterion: one yes/no call per criterion (paper); batched: one call per image answers every "
        "criterion (unreadable ones are asked again one by one)",
    )
    compress: Literal["separate", "merged"] = Field(
        "separate", description="separate: a compressor call per round (paper); merged: the refiner writes the "
        "round's lesson with the next prompt, in one call",
    )  # fmt: skip
    review_rounds: bool = Field(
        False,
        description="pause after each round that did not pass everything: accept its image now, edit the next "
        "prompt or the criteria, or go on",
    )


class SkillSettings(_Strict):
    """The SKILL.md library the planner routes to."""

    enabled: bool = Field(True, description="false reproduces the loop without skills")
    bundled: bool = Field(
        True, description="include the skills shipped with gems; false: only skills.paths (an evolved library)"
    )
    paths: list[Path] = Field(default_factory=list, description="extra folders holding <name>/SKILL.md")
    top_k: int = Field(4, ge=1, le=50, description="candidates retrieved per prompt and shown to the planner")
    min_relevance: float = Field(0.0, ge=0, le=1, description="cosine relevance a candidate needs")
    max_active: int = Field(1, ge=1, le=10, description="skills the planner may load for one prompt (paper: 1)")
    tool_calling: Literal["auto", "tools", "text"] = Field(
        "auto",
        description="tools: load_skill via tool calls; text: name-or-NONE reply (endpoints without tool calling); "
        "auto: tools, falling back to text when the endpoint refuses tools",
    )
    to_refiner: bool = Field(False, description="also give loaded skills' instructions to the refiner")


MemoryMode = Literal["last", "feedback", "images", "thought", "experience"]


class EmbeddingSettings(_Strict):
    """One embedding model for the experience store and skill retrieval."""

    provider: Literal["local", "openai"] = Field(
        "local", description="local: sentence-transformers on this machine; openai: an OpenAI-compatible /v1/embeddings"
    )
    model: ModelName | None = Field(
        None, description="local: a sentence-transformers folder (default: the bundled all-MiniLM-L6-v2); openai: name"
    )
    base_url: BaseURL | None = Field(None, description="openai provider: base URL ending in /v1")
    api_key: SecretStr | None = Field(None, description="openai provider; falls back to OPENAI_API_KEY")
    device: str = Field("cpu", description="local provider: cpu, cuda, mps")
    timeout_s: float = Field(60.0, gt=0, description="openai provider: wall-clock limit of one request (each try)")
    max_retries: int = Field(2, ge=0, le=10, description="openai provider: retries of a failed request")


class ChromaSettings(_Strict):
    """Where the cross-run experience store lives: embedded by default, a Chroma server when `host` is set."""

    path: Path | None = Field(None, description="embedded store folder; default <data_dir>/chroma")
    host: str | None = Field(None, description="Chroma server host; set to use chromadb.HttpClient")
    port: int = Field(8000, ge=1, le=65535)
    ssl: bool = False
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. an auth header for a hosted server")
    collection: str = Field("gems_lessons", min_length=3, max_length=512)


class MemorySettings(_Strict):
    """What the refiner remembers of earlier rounds (the paper's ablation rows) and what carries across runs."""

    mode: MemoryMode = Field(
        "experience",
        description="last: only the latest attempt; feedback: prompts + failed criteria; images: + images; "
        "thought: + raw reasoning; experience: + images + compressed experiences (paper default)",
    )
    image_window: int | None = Field(
        None, ge=0, description="send images of at most this many latest rounds; unset = all (paper)"
    )
    lessons: bool = Field(True, description="cross-run lessons in Chroma; false reproduces the paper exactly")
    top_k: int = Field(3, ge=1, le=20, description="lessons retrieved per run")
    min_relevance: float = Field(0.5, ge=0, le=1, description="cosine relevance a lesson needs to be used")
    same_generator_only: bool = Field(True, description="retrieve only lessons learned with this generator model")
    lessons_to_refiner: bool = Field(
        True, description="give retrieved lessons to the refiner too, not only the planner"
    )
    chroma: ChromaSettings = Field(default_factory=ChromaSettings)
    tenant: str | None = Field(
        None,
        pattern=rf"^{TENANT_PATTERN}$",
        description="set by servers per API key: lessons are kept and searched only within the tenant",
    )


class StorageSettings(_Strict):
    """Where thread checkpoints live, and how large an image may be."""

    checkpointer: Literal["sqlite", "memory", "postgres"] = "sqlite"
    sqlite_path: Path | None = Field(None, description="default: <data_dir>/checkpoints.sqlite")
    postgres_dsn: SecretStr | None = None
    max_pixels: int = Field(
        4096 * 4096, ge=64 * 64, description="larger generator images are refused from their header, before decoding"
    )


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "gems"


class GemsSettings(_Strict):
    """Everything a run needs; the graph's context schema."""

    data_dir: Path = Field(default_factory=_default_data_dir, description="checkpoints, artifacts, stores")
    mllm: MLLMSettings = Field(default_factory=MLLMSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    editor: EditorSettings = Field(default_factory=EditorSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    skills: SkillSettings = Field(default_factory=SkillSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    judge: JudgeSettings | None = Field(
        None, description="gems bench: the VQA model that scores images (Soft-TIFA); keep it apart from mllm"
    )
    storage: StorageSettings = Field(default_factory=StorageSettings)

    @field_validator("data_dir")
    @classmethod
    def _a_folder(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a folder; point data_dir (GEMS_DATA_DIR) at a folder")
        return value

    @model_validator(mode="after")
    def _editor_when_editing(self) -> GemsSettings:
        why = missing_editor(self)
        if why:
            raise ValueError(why)
        return self

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def chroma_path(self) -> Path:
        return self.memory.chroma.path or self.data_dir / "chroma"

    @property
    def sqlite_path(self) -> Path:
        return self.storage.sqlite_path or self.data_dir / "checkpoints.sqlite"


def missing_editor(settings: GemsSettings) -> str | None:
    """Why these settings cannot run: refine_mode edit or auto with no editor configured; None when they can."""
    if settings.loop.refine_mode != "regenerate" and settings.editor.backend == "none":
        return NO_EDITOR.format(mode=settings.loop.refine_mode)
    return None


class RunLoop(_Strict):
    """The loop options a run may set (within the same bounds as `LoopSettings`); unset: the server's own."""

    max_rounds: Rounds | None = None
    seed: Seed | None = None
    images_per_round: Candidates | None = None
    human_review: bool | None = Field(None, description="pause before the first generation for review")
    review_rounds: bool | None = Field(None, description="pause after each round for review")
    refine_mode: RefineMode | None = Field(None, description="regenerate, edit or auto (edit and auto need an editor)")


# What a run keeps in its state as it started: a resume runs with these, whoever resumes it.
PINNED = tuple(RunLoop.model_fields)


class _RunMemory(_Strict):
    mode: MemoryMode | None = Field(None, description="what the refiner remembers of earlier rounds")


class _RunSkills(_Strict):
    enabled: bool | None = Field(None, description="false runs the loop without skills")


class RunOptions(_Strict):
    """What a client may set per run on a shared server (the served graph's context schema).

    Only options that cannot reach new hosts, keys or paths: endpoints, models, keys, folders and stores stay as the
    server's config says. Anything else is refused by validation, naming the field.
    """

    loop: RunLoop = Field(default_factory=RunLoop)
    memory: _RunMemory = Field(default_factory=_RunMemory)
    skills: _RunSkills = Field(default_factory=_RunSkills)

    def apply(self, base: GemsSettings) -> GemsSettings:
        """`base` with the options this run sets.

        Raises:
            ConfigError: the run asks for refine_mode edit or auto and the server has no editor.
        """
        updates = {}
        for section in ("loop", "memory", "skills"):
            chosen = {k: v for k, v in getattr(self, section).model_dump(exclude_none=True).items()}
            if chosen:
                updates[section] = getattr(base, section).model_copy(update=chosen)
        applied = base.model_copy(update=updates)
        why = missing_editor(applied)
        if why:
            raise ConfigError(why + " in the server's config")
        return applied

"""A tiny Qwen3-VL (the real transformers class) with random weights, built in code and saved like a hub folder.

The tokenizer is a byte-level BPE trained here on a few sentences (about 350 tokens), so some answer words start
with a piece of themselves (`three` -> `t`, `eleven` -> `el`), as in the real vocabulary. The processor is
Qwen3-VL's without its video processor (that needs torchvision, which does not load with the CPU torch wheel
here); the folder holds the tokenizer, the image processor and the chat template, as a real checkpoint does, and
gems' loader builds the image-only processor from them.

`scripted=True` makes the weights answer the same text whatever the prompt: every decoder layer's output
projections are zero, so the last position's logits depend only on the last token, and the embeddings and the
output head chain `\\n -> ["Is it red?"] -> <|im_end|>`. That answer is a criteria list for the decomposer, an
unclear verdict (a fail) for the verifier, a prompt for the refiner and an experience for the compressor: a
whole run goes through every role.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]  # fmt: skip
ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
SCRIPTED_ANSWER = '["Is it red?"]'
# The answer as tokens, each followed by the next; the prompt's last token (the newline after "assistant") starts it.
CHAIN = ["Ċ", '["', "Is", "Ġit", "Ġred", '?"]', "<|im_end|>"]

# A Qwen-style template written for these tests: system, user turns with image placeholders, tools in the
# system turn, assistant tool calls as <tool_call> JSON, tool results as <tool_response>.
CHAT_TEMPLATE = """{%- macro text(content) -%}
{%- if content is string -%}{{ content }}{%- else -%}
{%- for part in content -%}
{%- if part.type == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>
{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- if tools -%}<|im_start|>system
{% if messages[0].role == 'system' %}{{ text(messages[0].content) }}

{% endif %}You may call these tools, each call as <tool_call>{"name": NAME, "arguments": {...}}</tool_call>:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools><|im_end|>
{% endif -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- if not tools -%}<|im_start|>system
{{ text(m.content) }}<|im_end|>
{% endif -%}
{%- elif m.role == 'tool' -%}<|im_start|>user
<tool_response>
{{ text(m.content) }}
</tool_response><|im_end|>
{% else -%}<|im_start|>{{ m.role }}
{{ text(m.content) }}
{%- for call in m.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}"""

# The same without tools, for a model whose template cannot call them.
TEXT_ONLY_TEMPLATE = CHAT_TEMPLATE.replace("{%- if tools -%}", "{%- if false -%}").replace("not tools", "true")

CORPUS = [
    *["Yes yes Yes no No one two three four five six seven eight nine ten eleven twelve zero"] * 30,
    *[SCRIPTED_ANSWER + " " + SCRIPTED_ANSWER] * 40,
    *["Is there a red cube? Is the sphere blue? How many cats are there? Answer in one word."] * 20,
    "You are a planner. Write the criteria as a JSON list of questions. Experience. Refine the prompt.",
]


@functools.cache
def _trained_bpe() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    return bpe.to_str()


def tokenizer():
    """The byte-level BPE, wrapped as a transformers tokenizer (special tokens as Qwen names them)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer.from_str(_trained_bpe())  # trained once per process
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(ADDED)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def image_processor(max_pixels: int = 64 * 64):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # 16-pixel patches merged 2x2 (one token per 32x32 pixels), by default at most 64x64: 4 to 16 tokens.
    return Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32, max_pixels=max_pixels
    )


def tiny_qwen3_vl(tok, seed: int = 0, scripted: bool = False):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = tok.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    head = model.lm_head.weight
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        head.mul_(10)  # logits with a spread, so each answer token's probability differs
        if scripted:
            for layer in model.model.language_model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            for i, (token, nxt) in enumerate(itertools.pairwise(CHAIN)):
                basis = torch.zeros(embed.shape[1])
                basis[i] = 1.0
                embed[ids(token)] = basis
                head[ids(nxt)] = 10 * basis
    # Random weights: no end token, every answer runs to max_tokens. Scripted: it ends at <|im_end|>.
    model.generation_config.eos_token_id = ids("<|im_end|>") if scripted else None
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def save_tiny_qwen3_vl(
    folder: Path, seed: int = 0, scripted: bool = False, template: str = CHAT_TEMPLATE, max_pixels: int = 64 * 64
) -> Path:
    """Build and `save_pretrained` the tiny model, tokenizer, image processor and chat template into `folder`."""
    tok = tokenizer()
    for token in CHAIN:
        assert len(tok.tokenize(token.replace("Ġ", " ").replace("Ċ", "\n"))) == 1 or token.startswith("<|"), token
    tok.chat_template = template
    tiny_qwen3_vl(tok, seed, scripted).save_pretrained(folder)
    tok.save_pretrained(folder)
    image_processor(max_pixels).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return folder

"""Tiny random-weight diffusers pipelines built in code (no download), with byte-level tokenizers."""

from __future__ import annotations

from pathlib import Path


def _bytes_to_unicode() -> list[str]:
    # The GPT-2/CLIP byte-to-unicode table: 256 printable symbols, one per byte.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(max_len: int = 77):
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = max_len
    return tok


def tiny_stable_diffusion(seed: int = 0):
    """A ~120k-parameter StableDiffusionPipeline with random weights; 64x64 in 2 steps takes ~0.05 s on CPU."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tok = clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tok),
            max_position_embeddings=77,
            projection_dim=16,
        )
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_stable_diffusion(folder: Path) -> Path:
    """Build the tiny pipeline and `save_pretrained` it, as a user's local model folder would look."""
    tiny_stable_diffusion().save_pretrained(folder)
    return folder


QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2_tokenizer():
    """A byte-level Qwen2 tokenizer (one token per byte) with the chat template Z-Image and Qwen-Image apply."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(_bytes_to_unicode())}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def tiny_z_image(seed: int = 0):
    """A ~1M-parameter ZImagePipeline (configs from diffusers' own fast tests, tokenizer built in code)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = qwen2_tokenizer()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[256, 32, 32],
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[32, 64], layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=32,
        scaling_factor=0.3611, shift_factor=0.1159, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    encoder = Qwen3Model(
        Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512)
    )  # fmt: skip
    return ZImagePipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=encoder,
        tokenizer=tok,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _qwen_image_dit_and_vae():
    """The transformer and VAE of diffusers' Qwen-Image fast tests (shared by the generation and edit pipelines)."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    return transformer, vae


def tiny_qwen_image(seed: int = 0):
    """A ~4M-parameter QwenImagePipeline (Qwen2.5-VL text encoder), built in code."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tok = qwen2_tokenizer()
    n = len(tok)
    transformer, vae = _qwen_image_dit_and_vae()
    text = {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": n + 8,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16}
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, hidden_size=16, vocab_size=n + 8, vision_start_token_id=n,
        vision_end_token_id=n + 1, vision_token_id=n + 2, image_token_id=n + 3, video_token_id=n + 4,
    )  # fmt: skip
    return QwenImagePipeline(
        transformer=transformer, vae=vae, text_encoder=Qwen2_5_VLForConditionalGeneration(config), tokenizer=tok,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip


def t5_tokenizer():
    """A character-level T5 (Unigram) tokenizer built from an in-memory vocabulary."""
    from transformers import T5Tokenizer

    pieces = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:'\"!?-()\u2581"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in pieces]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_flux_kontext(seed: int = 0):
    """A FluxKontextPipeline (image editing) with random weights, sized as diffusers' own fast tests."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    clip = CLIPTextModel(
        CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, hidden_size=32,
                       intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok),
                       projection_dim=32, max_position_embeddings=77)
    )  # fmt: skip
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tok2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8)
    )  # fmt: skip
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=clip, text_encoder_2=t5, tokenizer=tok,
        tokenizer_2=tok2, transformer=transformer, vae=vae, image_encoder=None, feature_extractor=None,
    )  # fmt: skip


def save_tiny_flux_kontext(folder: Path) -> Path:
    tiny_flux_kontext().save_pretrained(folder)
    return folder


def tiny_qwen_image_edit_plus(seed: int = 0):
    """A QwenImageEditPlusPipeline (Qwen-Image-Edit-2509/2511's class) with random weights and an in-memory processor.

    The pipeline encodes its input image at about one megapixel for the VAE (a module constant); the tiny one uses
    64x64 so a CPU edit takes a fraction of a second. The processor is the real Qwen2VLProcessor without a video
    processor (that needs torchvision, which the edit path never touches).
    """
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
    )
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE = 64 * 64
    pipeline_qwenimage_edit_plus.CONDITION_IMAGE_SIZE = 56 * 56
    torch.manual_seed(seed)
    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(_bytes_to_unicode())}, merges=[])
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    processor = ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tok,
        video_processor=None,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    n = len(tok)
    transformer, vae = _qwen_image_dit_and_vae()
    text = {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": n, "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16}
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, hidden_size=16, vocab_size=n,
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|image_pad|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    )  # fmt: skip
    return QwenImageEditPlusPipeline(
        transformer=transformer, vae=vae, text_encoder=Qwen2_5_VLForConditionalGeneration(config), tokenizer=tok,
        processor=processor, scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip


def tiny_flux2_klein(seed: int = 0):
    """A Flux2KleinPipeline with random weights: text-to-image that also takes a reference image (`image=`).

    Call it with `text_encoder_out_layers=(1,)`: the tiny text encoder has two layers, not the real model's 36.
    """
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tok = qwen2_tokenizer()
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False,
    )  # fmt: skip
    encoder = Qwen3ForCausalLM(
        Qwen3Config(intermediate_size=16, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512)
    )  # fmt: skip
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=encoder,
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
    )


def save_tiny_flux2_klein(folder: Path) -> Path:
    tiny_flux2_klein().save_pretrained(folder)
    return folder

"""MusicGen-small as a stock `MusicgenForConditionalGeneration`, random or local weights.

MusicGen (Copet et al. 2023, arXiv:2306.05284) is an autoregressive transformer decoder over the
tokens of EnCodec 32 kHz: 4 codebooks of 2048 entries at 32000 / 640 = 50 frames/s, interleaved
with the delay pattern (codebook k lags k frames) so one step predicts all 4. It cross-attends to
the T5-base encoder's states of the prompt. Weights live only on the Hugging Face hub
(facebook/musicgen-small), so the model is built from its published config with random weights,
or loaded from a local copy of that repository.

Presets (same classes, same token geometry: 4 codebooks x 2048 at 50 frames/s, 32 kHz mono):
    small  facebook/musicgen-small exactly.
    tiny   for tests: 2 decoder layers 64 wide, a T5 and an EnCodec a few channels wide.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from .common import (
    T5_BASE,
    T5_TINY,
    byte_tokenizer,
    check_local_weights,
    check_preset,
    seeded_build,
)

REPO_ID = "facebook/musicgen-small"
PRESETS = ("small", "tiny")

# ---------------------------------------------------------------------------------------------
# Configs (data), those of facebook/musicgen-small's config.json. transformers'
# convert_musicgen_transformers.py builds the checkpoint from T5EncoderModel "t5-base",
# EncodecModel "facebook/encodec_32khz" and, for "small", MusicgenDecoderConfig(hidden_size=1024,
# ffn_dim=4 * 1024, num_hidden_layers=24, tie_word_embeddings=False), other fields at their
# defaults (16 heads, 4 codebooks, vocab 2048, pad = bos = 2048).
# ---------------------------------------------------------------------------------------------

DECODER_CONFIGS = {
    "small": dict(
        vocab_size=2048,  # codebook size; id 2048 is the pad / start token (embeddings are 2049)
        max_position_embeddings=2048,  # sinusoidal, no weights
        num_hidden_layers=24,
        ffn_dim=4096,
        num_attention_heads=16,  # 16 x 64 = 1024 wide
        hidden_size=1024,
        activation_function="gelu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        initializer_factor=0.02,
        scale_embedding=False,
        num_codebooks=4,
        audio_channels=1,
        pad_token_id=2048,
        bos_token_id=2048,
        tie_word_embeddings=False,
    ),
}
DECODER_CONFIGS["tiny"] = {
    **DECODER_CONFIGS["small"], "num_hidden_layers": 2, "ffn_dim": 128, "num_attention_heads": 4,
    "hidden_size": 64,
}

# EnCodec 32 kHz (transformers convert_encodec_checkpoint_to_pytorch.py, "encodec_32khz": the
# library defaults with these changes): hop 8 * 5 * 4 * 4 = 640 samples = 50 frames/s; 2.2 kbps
# = 4 codebooks x 11 bits x 50 frames/s, so the quantizer keeps exactly 4 codebooks.
AUDIO_ENCODER_CONFIGS = {
    "small": dict(
        sampling_rate=32000,
        audio_channels=1,
        target_bandwidths=[2.2],
        upsampling_ratios=[8, 5, 4, 4],
        num_filters=64,
        hidden_size=128,
        codebook_size=2048,
        codebook_dim=128,
        num_residual_layers=1,
        num_lstm_layers=2,
        norm_type="weight_norm",
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        use_causal_conv=False,
        pad_mode="reflect",
        compress=2,
        trim_right_ratio=1.0,
        normalize=False,
        use_conv_shortcut=False,
        chunk_length_s=None,
        overlap=None,
    ),
}
AUDIO_ENCODER_CONFIGS["tiny"] = {
    **AUDIO_ENCODER_CONFIGS["small"], "num_filters": 2, "hidden_size": 16, "codebook_dim": 16,
    "num_lstm_layers": 1,
}

TEXT_ENCODER_CONFIGS = {"small": T5_BASE, "tiny": T5_TINY}

# Generation defaults set by the conversion script: decoding starts from and pads with id 2048.
GENERATION_DEFAULTS = dict(decoder_start_token_id=2048, pad_token_id=2048)

# The t5-base tokenizer's model_max_length (512); only used by the stand-in tokenizer.
TOKENIZER_MAX_LENGTH = 512

# What a local copy must hold (the published repository's files needed for the model).
LOCAL_LAYOUT = {"": ["config.json", "*.safetensors|*.bin"]}


def musicgen_config(preset: str = "small") -> MusicgenConfig:
    """The composite config (text encoder, audio encoder, decoder) of `preset`."""
    check_preset(preset, PRESETS, "MusicGen")
    return MusicgenConfig(
        text_encoder=T5Config(**TEXT_ENCODER_CONFIGS[preset]),
        audio_encoder=EncodecConfig(**AUDIO_ENCODER_CONFIGS[preset]),
        decoder=MusicgenDecoderConfig(**DECODER_CONFIGS[preset]),
    )


def build_musicgen(
    preset: str = "small",
    weights: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> MusicgenForConditionalGeneration:
    """Build a stock `MusicgenForConditionalGeneration` at `preset` size.

    Args:
        preset: "small" (facebook/musicgen-small) or "tiny" (tests).
        weights: None for random weights drawn with `seed`; or a local directory laid out like the
            published repository (config.json + model.safetensors). Its config then defines the
            architecture and `preset` is only validated. A path never falls back to random
            weights: an absent or incomplete directory raises FileNotFoundError naming each
            missing file.
        dtype: parameter dtype.
        device: where the model lives; "meta" builds shapes without storage.
        seed: seed of the random weights (the caller's RNG state is left untouched).

    Shapes: `model.generate(input_ids=ids, max_new_tokens=n)` takes T5 token ids (batch, tokens)
    and returns audio (batch, 1, 640 * (n - 3)) samples at 32 kHz: each step emits one frame of
    4 codes, and the delay pattern spends the first num_codebooks - 1 = 3 steps filling in.
    Without the T5 sentencepiece model, `musicgen_tokenizer()` makes valid ids.
    """
    check_preset(preset, PRESETS, "MusicGen")
    if weights is not None:
        if torch.device(device).type == "meta":
            raise ValueError("device='meta' builds random-weight shapes only; pass weights=None")
        root = check_local_weights(weights, LOCAL_LAYOUT, REPO_ID)
        model = MusicgenForConditionalGeneration.from_pretrained(
            root, local_files_only=True, dtype=dtype
        )
        return model.to(device).eval()

    with seeded_build(seed, device):
        model = MusicgenForConditionalGeneration(musicgen_config(preset))
    model.generation_config.update(**GENERATION_DEFAULTS)
    return model.to(device=device, dtype=dtype).eval()


def musicgen_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level stand-in for the t5-base tokenizer (valid ids for random weights only)."""
    return byte_tokenizer(TOKENIZER_MAX_LENGTH)


def musicgen_components(model: MusicgenForConditionalGeneration) -> dict[str, nn.Module]:
    """The model's parts by role (for `parameter_table`).

    enc_to_dec_proj (768 -> 1024, T5 states into the decoder's width) belongs to none of the three
    named parts; it is listed so that the rows add up to the whole model.
    """
    parts = {
        "decoder": model.decoder,
        "text_encoder": model.text_encoder,
        "audio_encoder": model.audio_encoder,
    }
    if getattr(model, "enc_to_dec_proj", None) is not None:
        parts["enc_to_dec_proj"] = model.enc_to_dec_proj
    return parts

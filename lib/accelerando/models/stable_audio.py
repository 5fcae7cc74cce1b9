"""Stable Audio Open 1.0 as a stock diffusers `StableAudioPipeline`, random or local weights.

Stable Audio Open (Evans et al. 2024, arXiv:2407.14358) is a latent diffusion model: an Oobleck
VAE turns 44.1 kHz stereo audio into 64-channel latents at 44100 / 2048 = 21.5 frames/s, a DiT
denoises them conditioned on T5-base text embeddings and on start/end seconds, and a cosine
DPM-Solver++ (SDE) schedule drives sampling. Weights live only on the Hugging Face hub
(stabilityai/stable-audio-open-1.0, gated), so here every component is built from its published
config with random weights, or loaded from a local copy of that repository.

Presets (same classes; same audio geometry: 44.1 kHz stereo, hop 2048 samples = 21.5 frames/s):
    full   the published configs exactly: DiT 1057 M, VAE 156 M, T5-base encoder 110 M params.
    small  64 latent channels like full; DiT 16 heads x 64 = 1024 wide, 12 layers (237 M), VAE
           decoder 4x narrower (8.7 M), t5-small-shaped encoder (35 M): a forward costs roughly a
           quarter of full's (Chapter 1 and `python -m accelerando.bench baseline` measure both).
    tiny   for tests: 8 latent channels, 32 frames (1.49 s) at most; builds and runs in
           milliseconds.

Cost trap: `StableAudioPipeline.__call__` always denoises `transformer.config.sample_size` frames
(1024 = 47.55 s for full and small) and crops the decoded waveform to `audio_end_in_s`: every
call pays for 47.55 s whatever length is asked for. For shorter experiments call the transformer
and VAE on fewer frames directly (as accelerando.bench.baseline does).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from torch import nn
from transformers import T5Config, T5EncoderModel

from .common import (
    T5_BASE,
    T5_SMALL,
    T5_TINY,
    byte_tokenizer,
    check_local_weights,
    check_preset,
    seeded_build,
)

REPO_ID = "stabilityai/stable-audio-open-1.0"
PRESETS = ("full", "small", "tiny")

# ---------------------------------------------------------------------------------------------
# Configs (data). "full" is the published repository's; the diffusers conversion script
# (huggingface/diffusers scripts/convert_stable_audio.py) derives each from stable-audio-tools'
# model_config.json for this model: sample_size 2097152 samples, sample_rate 44100; pretransform
# Oobleck channels 128, c_mults [1, 2, 4, 8, 16], strides [2, 4, 4, 8, 8], latent_dim 64,
# downsampling_ratio 2048, io_channels 2; conditioning t5-base (max_length 128) plus
# seconds_start / seconds_total numbers in [0, 512], cond_dim 768; DiT io_channels 64,
# embed_dim 1536, depth 24, num_heads 24, cond_token_dim 768, global_cond_dim 1536.
# ---------------------------------------------------------------------------------------------

# transformer/config.json. sample_size is in latent frames: 2097152 / 2048 = 1024 (47.55 s).
# Key/value heads of the cross-attention = cond_token_dim / head_dim = 768 / 64 = 12.
TRANSFORMER_CONFIGS = {
    "full": dict(
        sample_size=1024,
        in_channels=64,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,  # 24 x 64 = 1536 wide
        num_key_value_attention_heads=12,
        out_channels=64,
        cross_attention_dim=768,
        time_proj_dim=256,
        global_states_input_dim=1536,  # seconds_start ++ seconds_total embeddings, 2 x 768
        cross_attention_input_dim=768,
    ),
    # Keeps the full model's head size (64), GQA ratio (2 query heads per KV head), conditioning
    # layout and latent shape; 1024 wide, 12 layers: ~1/4.5 of the full DiT's parameters.
    "small": dict(
        sample_size=1024,
        in_channels=64,
        num_layers=12,
        attention_head_dim=64,
        num_attention_heads=16,  # 16 x 64 = 1024 wide
        num_key_value_attention_heads=8,
        out_channels=64,
        cross_attention_dim=512,  # = 8 KV heads x 64, as 768 = 12 x 64 in the full model
        time_proj_dim=256,
        global_states_input_dim=1024,  # 2 x conditioning_dim
        cross_attention_input_dim=512,  # = conditioning_dim = t5-small d_model
    ),
    "tiny": dict(
        sample_size=32,  # 32 frames x 2048 / 44100 Hz = 1.49 s
        in_channels=8,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        num_key_value_attention_heads=2,
        out_channels=8,
        cross_attention_dim=32,
        time_proj_dim=32,
        global_states_input_dim=64,
        cross_attention_input_dim=32,
    ),
}

# vae/config.json. hop = prod(downsampling_ratios) = 2048 samples in every preset. diffusers'
# Oobleck encoder ends in encoder_hidden_size channels, split into mean and scale, so
# encoder_hidden_size must be 2 x decoder_input_channels (128 = 2 x 64 as published).
VAE_CONFIGS = {
    "full": dict(
        encoder_hidden_size=128,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 2, 4, 8, 16],
        decoder_channels=128,
        decoder_input_channels=64,
        audio_channels=2,
        sampling_rate=44100,
    ),
    # Same latent, decoder 4x narrower (its full-rate blocks cost ~1/16), encoder capped at 512.
    "small": dict(
        encoder_hidden_size=128,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 1, 2, 2, 4],
        decoder_channels=32,
        decoder_input_channels=64,
        audio_channels=2,
        sampling_rate=44100,
    ),
    "tiny": dict(
        encoder_hidden_size=16,
        downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=8,
        decoder_input_channels=8,
        audio_channels=2,
        sampling_rate=44100,
    ),
}

TEXT_ENCODER_CONFIGS = {"full": T5_BASE, "small": T5_SMALL, "tiny": T5_TINY}

# projection_model/config.json: T5 width -> cond_dim (identity when equal, as published), and the
# two seconds conditioners (a learned Fourier embedding of seconds / 512, then a linear layer).
PROJECTION_CONFIGS = {
    "full": dict(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512),
    "small": dict(text_encoder_dim=512, conditioning_dim=512, min_value=0, max_value=512),
    "tiny": dict(text_encoder_dim=32, conditioning_dim=32, min_value=0, max_value=512),
}

# scheduler/scheduler_config.json (identical to CosineDPMSolverMultistepScheduler's defaults in
# diffusers 0.42, which were written for this model): v-prediction, EDM-style exponential sigma
# schedule from 500 to 0.3, second-order midpoint solver. Shared by every preset.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    sigma_data=1.0,
    sigma_max=500,
    sigma_min=0.3,
    sigma_schedule="exponential",
    solver_order=2,
    solver_type="midpoint",
    final_sigmas_type="zero",
    euler_at_final=False,
    lower_order_final=True,
    rho=7.0,
)

# tokenizer/tokenizer_config.json: model_max_length 128 (= the t5 conditioner's max_length).
TOKENIZER_MAX_LENGTH = 128

# What a local copy must hold (diffusers layout of the published repository).
_WEIGHTS = "*.safetensors|*.bin"
LOCAL_LAYOUT = {
    "": ["model_index.json"],
    "transformer": ["config.json", _WEIGHTS],
    "vae": ["config.json", _WEIGHTS],
    "text_encoder": ["config.json", _WEIGHTS],
    "projection_model": ["config.json", _WEIGHTS],
    "scheduler": ["scheduler_config.json"],
    "tokenizer": ["tokenizer_config.json", "tokenizer.json|spiece.model"],
}


def build_stable_audio(
    preset: str = "full",
    weights: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> StableAudioPipeline:
    """Build a stock `StableAudioPipeline` at `preset` size.

    Args:
        preset: "full" (published configs), "small" (about 1 s per DiT forward on 10 s of audio on
            CPU) or "tiny" (tests).
        weights: None for random weights drawn with `seed`; or a local directory laid out like the
            published repository (model_index.json, transformer/, vae/, text_encoder/,
            projection_model/, scheduler/, tokenizer/). The directory's configs then define the
            architecture and `preset` is only validated. A path never falls back to random
            weights: an absent or incomplete directory raises FileNotFoundError naming each
            missing file.
        dtype: parameter dtype, e.g. torch.float16.
        device: where the modules live; "meta" builds shapes without storage (count parameters of
            the full model instantly; the pipeline cannot run).
        seed: seed of the random weights (the caller's RNG state is left untouched).

    With random weights the tokenizer is a byte-level stand-in for T5's sentencepiece model (ids
    0/1/2 = pad/eos/unk as in T5, 256 byte ids below T5's vocabulary of 32,128,
    model_max_length 128 as published): it serves random weights, not real T5 weights.

    Shapes: `pipe(prompt, audio_end_in_s=s).audios` is (batch, 2, int(s * 44100)) samples; the
    DiT always denoises `transformer.config.sample_size` latent frames (1024 = 47.55 s for full
    and small, 32 = 1.49 s for tiny) of `vae.config.decoder_input_channels` channels, and the
    pipeline crops the decoded waveform.
    """
    check_preset(preset, PRESETS, "Stable Audio")
    if weights is not None:
        if torch.device(device).type == "meta":
            raise ValueError("device='meta' builds random-weight shapes only; pass weights=None")
        root = check_local_weights(weights, LOCAL_LAYOUT, REPO_ID)
        pipe = StableAudioPipeline.from_pretrained(root, local_files_only=True, dtype=dtype)
        return pipe.to(device)

    with seeded_build(seed, device):
        transformer = StableAudioDiTModel(**TRANSFORMER_CONFIGS[preset])
        vae = AutoencoderOobleck(**VAE_CONFIGS[preset])
        text_encoder = T5EncoderModel(T5Config(**TEXT_ENCODER_CONFIGS[preset]))
        projection_model = StableAudioProjectionModel(**PROJECTION_CONFIGS[preset])
    pipe = StableAudioPipeline(
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection_model,
        tokenizer=byte_tokenizer(TOKENIZER_MAX_LENGTH),
        transformer=transformer,
        scheduler=CosineDPMSolverMultistepScheduler(**SCHEDULER_CONFIG),
    )
    # Plain nn.Module.to: diffusers' ModelMixin.to warns about fp32-pinned modules on any dtype
    # cast, even when there are none.
    for module in stable_audio_components(pipe).values():
        nn.Module.to(module, device=device, dtype=dtype)
    return pipe


def stable_audio_components(pipe: StableAudioPipeline) -> dict[str, nn.Module]:
    """The pipeline's modules with weights, by role (for `parameter_table`)."""
    return {
        "transformer": pipe.transformer,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "projection_model": pipe.projection_model,
    }

"""What a Stable Audio DiT is conditioned on, built as `StableAudioPipeline.__call__` builds it.

One home for the pieces that training, quantization-aware training, sparse editing and the
benchmarks all feed the DiT, for the Lite and the full-size pipeline alike:

    prompts = check_prompts_fit(pipe, prompt)            # non-empty, within the tokenizer's length
    seconds = check_seconds(pipe, seconds)                # 0 < seconds <= what the model generates
    states, mask = text_states(pipe, prompts)             # text encoder token states [B, L, D], mask [B, L]
    cross, glob = conditioning(pipe, states, mask, start, end)    # training form, per-row seconds
    cross, glob = pipeline_conditioning(pipe, prompts, seconds, guidance=True)  # the pipeline's CFG batch
    cos, sin = rotary(pipe, frames)                       # rotary table for frames + the global token

The DiT sees cross-attention states = projected text tokens ++ seconds-start ++ seconds-end tokens
[B, L + 2, C], and global states = seconds-start ++ seconds-end along features [B, 1, 2C].
"""

from __future__ import annotations

import torch
from diffusers import StableAudioPipeline
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from .text_encoder import check_prompts


def check_prompts_fit(pipe: StableAudioPipeline, prompt: str | list[str]) -> list[str]:
    """The prompts as a list, refused with the fix if empty or longer than the pipeline's tokenizer
    pads to (the pipeline would silently truncate them)."""
    prompts = check_prompts(prompt)
    lengths = [len(ids) for ids in pipe.tokenizer(prompts, verbose=False)["input_ids"]]
    return check_prompts(prompts, pipe.tokenizer.model_max_length, lengths)


def max_seconds(pipe: StableAudioPipeline) -> float:
    """Longest audio the pipeline denoises: transformer sample_size x hop / sample rate (seconds)."""
    return pipe.transformer.config.sample_size * pipe.vae.hop_length / pipe.vae.config.sampling_rate


def check_seconds(pipe: StableAudioPipeline, seconds: float) -> float:
    """`seconds` as a float, refused with the fix unless 0 < seconds <= the longest audio the model
    generates (its latent length, and the seconds conditioners' trained range)."""
    limit = min(max_seconds(pipe), float(pipe.projection_model.config.max_value))
    if not 0 < seconds <= limit:
        raise ValueError(f"seconds={seconds}: this model generates up to {limit:.2f} s (its trained range); "
                         f"ask for 0 < seconds <= {limit:.2f}")
    return float(seconds)


def text_states(pipe: StableAudioPipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text encoder token states [B, L, D] and mask [B, L] of `prompts`, padded to the tokenizer's
    model_max_length L as the pipeline pads (Lite: MiniLM, L = 64, D = 384)."""
    check_prompts(prompts)
    batch = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = pipe.text_encoder(batch.input_ids, attention_mask=batch.attention_mask)[0]
    return states, batch.attention_mask


def conditioning(
    pipe: StableAudioPipeline,
    states: torch.Tensor,
    mask: torch.Tensor,
    seconds_start: torch.Tensor,
    seconds_end: torch.Tensor,
    drop: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention states [B, L + 2, C] and global states [B, 1, 2C] as the pipeline makes them.

    states/mask from `text_states`; seconds_* [B] in seconds. `drop` [B] bool marks rows whose
    cross-attention input becomes all zeros, the pipeline's unconditional input for guidance
    (classifier-free guidance dropout); the global (timing) states are kept, as in the pipeline.
    """
    proj = pipe.projection_model
    text = proj(text_hidden_states=states).text_hidden_states * mask.unsqueeze(-1).to(states.dtype)
    timing = proj(start_seconds=seconds_start, end_seconds=seconds_end)
    start, end = timing.seconds_start_hidden_states, timing.seconds_end_hidden_states  # [B, 1, C]
    cross = torch.cat([text, start, end], dim=1)
    if drop is not None:
        cross = torch.where(drop[:, None, None], torch.zeros_like(cross), cross)
    return cross, torch.cat([start, end], dim=2)


def pipeline_conditioning(pipe: StableAudioPipeline, prompts: list[str], seconds: float, guidance: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-attention states, global states) for audio [0, seconds), through the pipeline's own
    `encode_prompt` and `encode_duration`. With guidance, the batch is doubled as the pipeline
    doubles it: the unconditional rows (zeros; timing kept) first, [2B, L + 2, C] and [2B, 1, 2C]."""
    device = pipe._execution_device
    embeds = pipe.encode_prompt(prompts, device, guidance)
    start, end = pipe.encode_duration(0.0, seconds, device, False, len(prompts))
    cross = torch.cat([embeds, start, end], dim=1)
    glob = torch.cat([start, end], dim=2)
    if guidance:
        cross = torch.cat([torch.zeros_like(cross), cross])
        glob = torch.cat([glob, glob])
    return cross, glob


def rotary(pipe: StableAudioPipeline, frames: int, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's (cos, sin) rotary tables [frames + 1, head_dim / 2] for `frames` latent
    frames plus the prepended global token (rotary on half of each head, as the pipeline)."""
    cos, sin = get_1d_rotary_pos_embed(pipe.transformer.config.attention_head_dim // 2, frames + 1,
                                       use_real=True, repeat_interleave_real=False)
    return cos.to(device, dtype), sin.to(device, dtype)

"""Stable-Audio-Lite: a small latent text-to-audio diffusion model on the diffusers classes.

Every part is the class the full-size Stable Audio Open uses, in a small config (the autoencoder
a subclass that only changes its latent layout, same weights and modules), so a patch that works
here (quantization, sparse editing, attention) applies unchanged to the real model:

    vae               AutoencoderOobleckLite, `autoencoder_lite` (22.05 kHz mono, 64 latents, 21.5 fps)
    text_encoder      the pretrained all-MiniLM-L6-v2 BertModel, frozen (in place of T5-base)
    tokenizer         its WordPiece tokenizer, prompts padded to 64 tokens (T5's: 128)
    projection_model  StableAudioProjectionModel: 384 -> 128, seconds conditioners over 0..10 s
    transformer       StableAudioDiTModel: 8 layers, 2 heads x 64 wide, 1 KV head, 215 frames
                      (9.99 s), 2.6 M parameters (the published DiT: 24 layers, 1536 wide, 1057 M)
    scheduler         CosineDPMSolverMultistepScheduler, the published config with sigma_data set
                      to the trained latents' standard deviation and the noise range scaled by it

and sampling is `StableAudioPipeline.__call__` itself: `generate()` below runs the Lite and the
full-size pipeline through the same call. Training: `accelerando.train.dit`.

    pipe = load_stable_audio_lite()                        # committed checkpoints in checkpoints/
    audio, sr = generate(pipe, "a chorale in D major for brass at 90 BPM", seconds=8.0)
    pipe = build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG))

The diffusion parametrisation is the scheduler's (EDM preconditioning, Karras et al. 2022, with
v-prediction): a latent x0 with noise level sigma is x = x0 + sigma * n; the transformer sees
c_in(sigma) * x and the timestep atan(sigma) * 2 / pi, and its output F gives the denoised
latent c_skip * x + c_out * F. `diffusion_target` is the F that training regresses.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from torch import nn

from ..checkpoint import CHECKPOINTS, file_sha256, load_checked, save_fp16
from ..musical_controls import MusicalControls, control_features
from .autoencoder_lite import WEIGHTS_FILE as VAE_WEIGHTS_FILE
from .autoencoder_lite import load_autoencoder_lite
from .common import seeded_build
from .control_adapter import MusicalControlAdapter, controls_applied
from .latent_grouping import latent_channels
from .stable_audio import SCHEDULER_CONFIG
from .stable_audio_conditioning import check_prompts_fit, check_seconds, max_seconds
from .text_encoder import shared_text_encoder

DIT_CHECKPOINT = CHECKPOINTS / "stable_audio_lite"
VAE_CHECKPOINT = CHECKPOINTS / "autoencoder_lite"

# transformer config. Head size 64 and the 2:1 query:KV head ratio as published, small enough
# that a training step on 16 x 10 s costs about a second on 2 CPU cores; 215 latent frames
# x 1024 samples / 22050 Hz = 9.99 s, the corpus's clip length.
DIT_LITE_CONFIG = dict(
    sample_size=215,
    in_channels=64,  # = the Lite autoencoder's latent channels (as published)
    num_layers=8,
    attention_head_dim=64,
    num_attention_heads=2,  # 2 x 64 = 128 wide
    num_key_value_attention_heads=1,
    out_channels=64,
    cross_attention_dim=64,  # = 1 KV head x 64, as 768 = 12 x 64 in the full model
    time_proj_dim=256,
    global_states_input_dim=256,  # seconds_start ++ seconds_end embeddings, 2 x conditioning_dim
    cross_attention_input_dim=128,  # = conditioning_dim
)
DIT_TINY_CONFIG = dict(
    sample_size=16,  # 0.74 s at 21.5 frames/s
    in_channels=16,  # = AUTOENCODER_TINY_CONFIG's latent channels
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    num_key_value_attention_heads=1,
    out_channels=16,
    cross_attention_dim=16,
    time_proj_dim=32,
    global_states_input_dim=64,
    cross_attention_input_dim=32,
)

MINILM_DIM = 384  # all-MiniLM-L6-v2 hidden size
MAX_SECONDS = 10.0  # the corpus's clips: seconds conditioners cover 0..10 s


def projection_config(dit_config: dict) -> dict:
    """StableAudioProjectionModel kwargs matching `dit_config`: MiniLM width in, the DiT's
    conditioning width out, seconds over [0, MAX_SECONDS]."""
    return dict(
        text_encoder_dim=MINILM_DIM,
        conditioning_dim=dit_config["cross_attention_input_dim"],
        min_value=0,
        max_value=MAX_SECONDS,
    )


def scheduler_config(sigma_data: float = 1.0) -> dict:
    """The published scheduler config for latents of standard deviation `sigma_data`.

    The published model's latents have unit scale; these have whatever scale the autoencoder's
    small KL term left. sigma_data enters the preconditioning, and the noise range (0.3 .. 500 as
    published) is scaled by it, so that the sampler visits the same noise-to-signal ratios: with
    latents of std 0.1 the unscaled range would end at three times the signal and skip all fine
    detail.
    """
    sd = float(sigma_data)
    sigma_min = round(SCHEDULER_CONFIG["sigma_min"] * sd, 6)
    sigma_max = round(SCHEDULER_CONFIG["sigma_max"] * sd, 3)
    while not _brownian_tree_accepts(sigma_min, sigma_max):
        sigma_min = round(sigma_min - 1e-6, 6)
    return {**SCHEDULER_CONFIG, "sigma_data": sd, "sigma_min": sigma_min, "sigma_max": sigma_max}


def _brownian_tree_accepts(sigma_min: float, sigma_max: float) -> bool:
    """Whether the scheduler's last step can draw its noise for this sigma range.

    The scheduler's Brownian tree (torchsde, tol 1e-6) starts at sigma_min rounded to 6 decimals
    and compares query times unrounded, then rounds them: a float32 schedule whose last sigma lies
    above that start by less than the rounding asks for a zero-length interval and recurses until
    RecursionError. The last Karras sigma is the same for every step count > 1, so one schedule
    decides it; nudging sigma_min down by 1e-6 is far below any level the model can tell apart.
    """
    scheduler = CosineDPMSolverMultistepScheduler(**{**SCHEDULER_CONFIG, "sigma_min": sigma_min,
                                                     "sigma_max": sigma_max})
    scheduler.set_timesteps(2)
    last, start = float(scheduler.sigmas[-2]), round(sigma_min, 6)
    return not (last > start and round(last, 6) == start)


MAX_PROMPT_TOKENS = 64  # captions are < 40 word pieces; the pipeline pads every prompt to this


def prompt_tokenizer():
    """MiniLM's tokenizer with the pipeline's prompt length: StableAudioPipeline pads every prompt
    to `tokenizer.model_max_length` tokens. A copy, so the shared encoder's own limit is untouched."""
    tokenizer = copy.deepcopy(shared_text_encoder().tokenizer)
    tokenizer.model_max_length = MAX_PROMPT_TOKENS
    return tokenizer


def build_stable_audio_lite(
    dit_config: dict | None = None,
    vae: AutoencoderOobleck | None = None,
    sigma_data: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    controls: bool = False,
) -> StableAudioPipeline:
    """A stock `StableAudioPipeline` of Stable-Audio-Lite parts with random DiT/projection weights.

    `vae` defaults to the committed Lite autoencoder (`checkpoints/autoencoder_lite`); its latent
    channels must equal the DiT's in_channels. `sigma_data` goes into the scheduler config.
    `controls`: also a `MusicalControlAdapter` as `pipe.control_adapter` (else None), which
    `generate` applies with the beat, metre and key each prompt states.
    """
    dit_config = dict(DIT_LITE_CONFIG if dit_config is None else dit_config)
    vae = load_autoencoder_lite(VAE_CHECKPOINT) if vae is None else vae
    if latent_channels(vae) != dit_config["in_channels"]:
        raise ValueError(
            f"the autoencoder has {latent_channels(vae)} latent channels, the DiT config "
            f"in_channels={dit_config['in_channels']}: pair DIT_LITE_CONFIG with the Lite autoencoder "
            f"and DIT_TINY_CONFIG with AUTOENCODER_TINY_CONFIG"
        )
    with seeded_build(seed, "cpu"):
        transformer = StableAudioDiTModel(**dit_config)
        projection = StableAudioProjectionModel(**projection_config(dit_config))
    pipe = StableAudioPipeline(
        vae=vae.eval(),
        text_encoder=shared_text_encoder().bert,  # frozen, shared with CLAP-Lite
        projection_model=projection,
        tokenizer=prompt_tokenizer(),
        transformer=transformer,
        scheduler=CosineDPMSolverMultistepScheduler(**scheduler_config(sigma_data)),
    )
    pipe.set_progress_bar_config(disable=True)
    with seeded_build(seed + 1, "cpu"):
        pipe.control_adapter = MusicalControlAdapter(out_channels=dit_config["in_channels"]) if controls else None
    for module in trained_parts(pipe).values():
        nn.Module.to(module, dtype=dtype)
    nn.Module.to(pipe.vae, dtype=dtype)
    return pipe


def trained_parts(pipe: StableAudioPipeline) -> nn.ModuleDict:
    """The modules a Stable-Audio-Lite checkpoint holds: transformer, projection_model and, when the
    pipeline has one, control_adapter (the text encoder and the autoencoder are their own)."""
    parts = {"transformer": pipe.transformer, "projection_model": pipe.projection_model}
    if getattr(pipe, "control_adapter", None) is not None:
        parts["control_adapter"] = pipe.control_adapter
    return nn.ModuleDict(parts)


# ---------------------------------------------------------------------------------------------
# The diffusion objective (the conditioning is `stable_audio_conditioning`'s)
# ---------------------------------------------------------------------------------------------


def diffusion_target(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, sigma_data: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model input c_in * x, timestep [B], target F) for clean latents x0 [B, C, T], unit noise
    and noise levels sigma [B], in the scheduler's v-prediction EDM parametrisation."""
    s = sigma[:, None, None]
    x = x0 + s * noise
    c_in = 1 / (s**2 + sigma_data**2).sqrt()
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = -s * sigma_data / (s**2 + sigma_data**2).sqrt()
    return c_in * x, sigma.atan() / math.pi * 2, (x0 - c_skip * x) / c_out


# ---------------------------------------------------------------------------------------------
# Checkpoints: the trained transformer + projection; the autoencoder is its own checkpoint
# ---------------------------------------------------------------------------------------------

WEIGHTS_FILE = "stable_audio_lite.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
TRAIN_COMMAND = "python -m accelerando.train.dit --out {path}"


def save_stable_audio_lite(pipe: StableAudioPipeline, path: str | Path, vae_path: str | Path,
                           extra: dict | None = None) -> Path:
    """Write the pipeline's `trained_parts` (fp16) and a config.json naming the autoencoder
    checkpoint they were trained on (its weights' SHA-256) and sigma_data."""
    parts = trained_parts(pipe)
    adapter = parts["control_adapter"] if "control_adapter" in parts else None
    meta = {
        "class": "StableAudioLite",
        "format": FORMAT_VERSION,
        "transformer": {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")},
        "projection_model": {k: v for k, v in pipe.projection_model.config.items() if not k.startswith("_")},
        **({"control_adapter": {k: v for k, v in adapter.config.items() if not k.startswith("_")}} if adapter else {}),
        "sigma_data": float(pipe.scheduler.config.sigma_data),
        "max_prompt_tokens": int(pipe.tokenizer.model_max_length),
        "autoencoder_sha256": file_sha256(Path(vae_path) / VAE_WEIGHTS_FILE),
        **(extra or {}),
    }
    return save_fp16(parts, path, weights_name=WEIGHTS_FILE, config_name=CONFIG_FILE, meta=meta,
                     metadata={"format": str(FORMAT_VERSION)})


def load_stable_audio_lite(
    path: str | Path = DIT_CHECKPOINT,
    vae_path: str | Path = VAE_CHECKPOINT,
    dtype: torch.dtype = torch.float32,
) -> StableAudioPipeline:
    """The trained Stable-Audio-Lite pipeline from `path` (DiT + projection) and `vae_path`.

    Errors name the fix: a missing directory or file, a config.json of another kind, or an
    autoencoder other than the one the DiT was trained on (checked by the weights' SHA-256, so
    the autoencoder is loaded with whatever architecture its own config.json gives).
    """
    path, vae_path = Path(path).expanduser(), Path(vae_path).expanduser()
    fix = f"Train one with `{TRAIN_COMMAND.format(path=path)}` or pass the directory that holds it."
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"Stable-Audio-Lite checkpoint {path} lacks {CONFIG_FILE} or {WEIGHTS_FILE}. {fix}")
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
        dit_config, proj_config = meta["transformer"], meta["projection_model"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path / CONFIG_FILE} is not a Stable-Audio-Lite config ({err!r}). {fix}") from err
    if meta.get("class") != "StableAudioLite" or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / CONFIG_FILE}: class {meta.get('class')!r}, format {meta.get('format')!r}; "
                         f"expected 'StableAudioLite', format {FORMAT_VERSION}. {fix}")
    vae = load_autoencoder_lite(vae_path, expect_config=None)
    if file_sha256(vae_path / VAE_WEIGHTS_FILE) != meta["autoencoder_sha256"]:
        raise ValueError(
            f"{path} was trained on another autoencoder than the one in {vae_path} (SHA-256 of "
            f"{VAE_WEIGHTS_FILE} differs): its latents would mean nothing to this DiT. Pass the "
            f"autoencoder it was trained with, or retrain the DiT on this one ({fix})"
        )
    pipe = build_stable_audio_lite(dit_config, vae=vae, sigma_data=meta["sigma_data"])
    if projection_config(dit_config) != {k: proj_config.get(k) for k in projection_config(dit_config)}:
        raise ValueError(f"{path / CONFIG_FILE}: projection config {proj_config} does not fit the DiT config. {fix}")
    if "control_adapter" in meta:
        pipe.control_adapter = MusicalControlAdapter(**meta["control_adapter"])
    parts = trained_parts(pipe)
    load_checked(parts, path / WEIGHTS_FILE, fix)
    for module in (*parts.values(), pipe.vae):
        nn.Module.to(module, dtype=dtype).eval()
    return pipe


# ---------------------------------------------------------------------------------------------
# Generation: one call for the Lite and the full-size pipeline
# ---------------------------------------------------------------------------------------------


def generate(
    pipe: StableAudioPipeline,
    prompt: str | list[str],
    seconds: float,
    steps: int = 50,
    guidance_scale: float = 6.0,
    seed: int = 0,
    output_type: str = "np",
    controls: str | list[MusicalControls | None] | None = "caption",
) -> tuple[np.ndarray | torch.Tensor, int]:
    """Text to audio through `StableAudioPipeline.__call__` (any preset, Lite or full size).

    Returns (audio [B, channels, int(seconds x sr)] float32, sample rate in Hz); with
    output_type="latent", the final latents [B, C, sample_size] instead. Bad input raises a
    ValueError naming the fix: empty or over-long prompts, `seconds` outside (0, max_seconds],
    steps < 1. The same `seed` gives the same audio.

    `controls` (pipelines with a `control_adapter` only; others ignore it): "caption" follows the
    tempo, metre and key each prompt states (`MusicalControls.from_caption`), a list gives one
    `MusicalControls` (or None) per prompt, None generates from the text alone.
    """
    prompts = check_prompts_fit(pipe, prompt)
    seconds = check_seconds(pipe, seconds)
    if int(steps) < 1:
        raise ValueError(f"steps={steps}: use at least 1 denoising step")
    generator = torch.Generator("cpu").manual_seed(int(seed))
    adapter = getattr(pipe, "control_adapter", None)
    if adapter is None or controls is None:
        applied = contextlib.nullcontext()
    else:
        if controls == "caption":
            controls = [MusicalControls.from_caption(p, seconds) for p in prompts]
        if isinstance(controls, str) or len(controls) != len(prompts):
            raise ValueError(f"controls={controls!r}: use 'caption', None, or one MusicalControls (or None) per prompt")
        frames = pipe.transformer.config.sample_size
        features = torch.from_numpy(control_features(list(controls), frames, frames / max_seconds(pipe)))
        applied = controls_applied(pipe.transformer, adapter, features)
    with applied, warnings.catch_warnings():
        # torchsde's Brownian tree (the scheduler's SDE noise) warns when a step lands on the
        # interval's end in float rounding; harmless, and it would flood every call.
        warnings.filterwarnings("ignore", message="Should have", module="torchsde")
        out = pipe(prompts, audio_end_in_s=float(seconds), num_inference_steps=int(steps),
                   guidance_scale=float(guidance_scale), generator=generator, output_type=output_type)
    return out.audios, int(pipe.vae.config.sampling_rate)

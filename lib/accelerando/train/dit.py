"""Train Stable-Audio-Lite's denoiser (`accelerando.models.stable_audio_lite`) on corpus latents.

    python -m accelerando.train.dit --corpus full --minutes 45 --threads 1 --encode_threads 2 --out checkpoints/stable_audio_lite

Recipe, after Stable Audio Open (Evans et al. 2024, arXiv:2407.14358, section 3) at toy scale:
- Data: the trained Lite autoencoder's posterior-mean latents of `train_clips` corpus clips
  (encoded once and cached in .cache/latents; the encoder costs about 0.1 s per second of audio),
  with each clip's caption through the frozen MiniLM, padded as the pipeline pads prompts.
- Timing conditioning as in Stable Audio: with probability `crop_prob` a clip is cut to a random
  window of `min_crop_seconds` or more, placed at the start and followed by the latent of silence;
  seconds_start / seconds_end say where the window lay. Otherwise the whole clip (0 .. 9.99 s).
- Objective: the scheduler's own parametrisation (`stable_audio_lite.diffusion_target`: EDM
  preconditioning with v-prediction and sigma_data = the latents' standard deviation), noise
  levels sigma = sigma_data * tan(u * pi / 2) with u ~ U(0, 1) (the cosine schedule's uniform
  time), plain MSE on the network output.
- Classifier-free guidance: `cfg_dropout` of the rows get an all-zero cross-attention input, which
  is what `StableAudioPipeline` feeds as the unconditional branch.
- Musical controls (`controls=True`): each clip's annotated beats, downbeats and key as frame
  features (`accelerando.musical_controls`) through a `MusicalControlAdapter` into the DiT's input,
  cut with the latents when a clip is cropped. Rows dropped for guidance lose their controls too
  (the unconditional branch has none); of the rest, `control_dropout` lose the beat channels and,
  independently, the key channels, so that a prompt stating only one of them is in the training
  distribution.
- AdamW, linear warm-up then cosine decay over the wall-clock budget, gradient clipping, and an
  exponential moving average of the weights, which is what is saved and sampled.

Writes into `out`: stable_audio_lite.safetensors (fp16 EMA weights of transformer and projection),
config.json (architecture, sigma_data, the autoencoder's SHA-256) and train_log.json (settings,
command, per-step loss, validation losses of the raw and EMA weights, every run's command and
steps). The loop is `accelerando.train.run_training`: bf16 autocast where the CPU has AMX, and a
run stopped before `max_steps` continues where it stopped when run again.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import TrainingTask, config_from_argv, resolve_threads, run_training, settings_dict
from ..checkpoint import file_sha256
from ..data.latents import cached_latents, make_batch
from ..models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, WEIGHTS_FILE as VAE_WEIGHTS_FILE
from ..models.autoencoder_lite import build_autoencoder_lite, load_autoencoder_lite
from ..models.stable_audio_lite import (
    DIT_CHECKPOINT,
    DIT_LITE_CONFIG,
    DIT_TINY_CONFIG,
    VAE_CHECKPOINT,
    build_stable_audio_lite,
    diffusion_target,
    save_stable_audio_lite,
    trained_parts,
)
from ..models.stable_audio_conditioning import conditioning, rotary, text_states
from ..musical_controls import MusicalControls, control_features, drop_controls


@dataclass
class DiTTrainingConfig:
    corpus: str = "full"  # accelerando.data preset, rendered at the autoencoder's sample rate
    autoencoder: str = str(VAE_CHECKPOINT)  # the trained Lite autoencoder (model "tiny" ignores it: random tiny one)
    out: str = str(DIT_CHECKPOINT)
    model: str = "lite"  # "lite" (DIT_LITE_CONFIG) or "tiny" (tests; with the tiny autoencoder)
    minutes: float = 45.0  # wall-clock budget of the training loop (validation included)
    max_steps: int | None = None
    train_clips: int = 800  # of 1,600: the clips (and cached latents) Codec-Lite and MusicGen-Lite train on
    val_clips: int = 32
    batch_size: int = 16
    lr: float = 8e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-3  # Stable Audio's
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    cfg_dropout: float = 0.1
    init_from: str = ""  # a Stable-Audio-Lite checkpoint to start from (same config; its adapter may be absent)
    controls: bool = True  # beat / metre / key frame features through a MusicalControlAdapter
    control_dropout: float = 0.1  # per row, beat channels and key channels dropped independently
    crop_prob: float = 0.5
    min_crop_seconds: float = 2.0
    val_every: int = 200
    seed: int = 0
    threads: int | None = None  # torch threads of the training loop; None: every core
    encode_threads: int = 2  # ... of the one-off latent encoding (cached), which is the longer part on CPU
    precision: str | None = None  # "bf16" (autocast, fp32 master weights) or "fp32"; None: bf16 where the CPU has AMX
    steps_this_run: int | None = None  # stop this run after so many steps (resume state kept); None: its budget
    resume: bool = True  # continue from <out>/resume_state.pt when a stopped run left one
    log_every: int = 20


# -- data ---------------------------------------------------------------------------------------


def sample_sigmas(n: int, sigma_data: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """sigma = sigma_data * tan(u pi / 2), u ~ U(0, 1): uniform time of the cosine schedule."""
    u = torch.rand(n, generator=generator).clamp(1e-4, 1 - 1e-4)
    return sigma_data * torch.tan(u * math.pi / 2)


# -- loss ---------------------------------------------------------------------------------------


def diffusion_loss(pipe, x0, noise, sigma, states, mask, start, end, drop, sigma_data, controls=None) -> torch.Tensor:
    """MSE between the transformer's output and the v-prediction target (one batch); `controls`
    [B, F, T] (dropout already applied) enter through `pipe.control_adapter`."""
    model_input, timestep, target = diffusion_target(x0, noise, sigma, sigma_data)
    if controls is not None:
        model_input = pipe.control_adapter.add_to(model_input, controls)
    cross, glob = conditioning(pipe, states.float(), mask, start, end, drop)
    pred = pipe.transformer(model_input, timestep, encoder_hidden_states=cross, global_hidden_states=glob,
                            rotary_embedding=rotary(pipe, x0.shape[-1]), return_dict=False)[0]
    return nn.functional.mse_loss(pred, target)


# -- loop ---------------------------------------------------------------------------------------


def start_from(parts: nn.ModuleDict, dit_config: dict, vae_sha: str, path: Path) -> None:
    """Load a saved Stable-Audio-Lite's weights into `parts` (a control adapter it lacks keeps its
    zero start), refusing another architecture or another autoencoder's latents."""
    from ..checkpoint import load_checked
    from ..models.stable_audio_lite import CONFIG_FILE, WEIGHTS_FILE

    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("transformer") != dit_config:
        raise ValueError(f"init_from={path}: its transformer config differs from this run's; start from a checkpoint "
                         f"of the same model or drop init_from")
    if meta.get("autoencoder_sha256") != vae_sha:
        raise ValueError(f"init_from={path} was trained on another autoencoder's latents; drop init_from")
    load_checked(parts, path / WEIGHTS_FILE, new_parts=("control_adapter.",))


def train(cfg: DiTTrainingConfig, corpus=None, log_fn=print, command: str | None = None) -> dict:
    """Run the training described by `cfg`; returns the log (also written to cfg.out).
    `corpus` overrides cfg.corpus; `command` is recorded in the log (the CLI passes its own)."""
    from ..data import build_corpus, preset

    torch.set_num_threads(resolve_threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t_start = time.perf_counter()

    if cfg.model == "tiny":
        vae_path = Path(cfg.out) / "autoencoder_tiny"
        vae = build_autoencoder_lite(AUTOENCODER_TINY_CONFIG, seed=cfg.seed).eval()
        from ..models.autoencoder_lite import save_autoencoder_lite

        save_autoencoder_lite(vae, vae_path)
        dit_config = DIT_TINY_CONFIG
    elif cfg.model == "lite":
        vae_path = Path(cfg.autoencoder)
        vae = load_autoencoder_lite(vae_path)
        dit_config = DIT_LITE_CONFIG
    else:
        raise ValueError(f"model={cfg.model!r}: use 'lite' or 'tiny'")
    vae_sha = file_sha256(vae_path / VAE_WEIGHTS_FILE)
    sr, hop = vae.config.sampling_rate, vae.hop_length
    if corpus is None:
        corpus = build_corpus(preset(cfg.corpus, sample_rate=sr))
    if corpus.config.sample_rate != sr:
        raise ValueError(f"corpus at {corpus.config.sample_rate} Hz; the autoencoder needs {sr} Hz")

    train_all, val_all = corpus.filter(split="train"), corpus.filter(split="val")
    if not train_all or not val_all:
        raise ValueError(f"corpus {corpus.path} needs train and val clips, has {corpus.splits}")
    order = np.random.default_rng(cfg.seed).permutation(len(train_all))[: cfg.train_clips]
    train_clips, val_clips = [train_all[i] for i in sorted(order)], val_all[: cfg.val_clips]

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.encode_threads)
    lat_train = cached_latents(vae, vae_sha, corpus, train_clips, "train")
    lat_val = cached_latents(vae, vae_sha, corpus, val_clips, "val")
    torch.set_num_threads(resolve_threads(cfg.threads))
    encode_seconds = time.perf_counter() - t0
    frames = dit_config["sample_size"]
    if lat_train.shape[-1] < frames:
        raise ValueError(f"clips give {lat_train.shape[-1]} latent frames; the DiT config needs {frames}")
    lat_train, lat_val = lat_train[..., :frames], lat_val[..., :frames]
    sigma_data = float(lat_train.std())
    with torch.no_grad():
        silence = vae.encode(torch.zeros(1, 1, hop * 8)).latent_dist.mode()[0].mean(-1)  # [C]

    pipe = build_stable_audio_lite(dit_config, vae=vae, sigma_data=sigma_data, seed=cfg.seed, controls=cfg.controls)
    fps = sr / hop
    if cfg.controls:
        ctrl_train = torch.from_numpy(control_features([MusicalControls.from_clip(c) for c in train_clips], frames, fps))
        ctrl_val = torch.from_numpy(control_features([MusicalControls.from_clip(c) for c in val_clips], frames, fps))
    else:
        ctrl_train = ctrl_val = None
    t0 = time.perf_counter()
    text_train = [text_states(pipe, [c.caption for c in train_clips[i : i + 64]]) for i in range(0, len(train_clips), 64)]
    states_train = torch.cat([s for s, _ in text_train]).half()  # fp16 in memory: [N, 64, 384]
    mask_train = torch.cat([m for _, m in text_train])
    states_val, mask_val = text_states(pipe, [c.caption for c in val_clips])
    text_seconds = time.perf_counter() - t0

    parts = trained_parts(pipe)
    init_record = None
    if cfg.init_from:
        from ..models.stable_audio_lite import WEIGHTS_FILE

        init_record = {"path": cfg.init_from, "sha256": file_sha256(Path(cfg.init_from) / WEIGHTS_FILE)}
        start_from(parts, dit_config, vae_sha, Path(cfg.init_from))
    n_params = sum(p.numel() for p in parts.parameters())
    decay, no_decay = [], []
    for name, p in parts.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=cfg.betas)

    # Fixed validation batch: every val clip whole, at noise levels spread over the schedule.
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n_val = len(val_clips)
    val_u = (torch.arange(n_val) + 0.5) / n_val
    val_sigma = sigma_data * torch.tan(val_u * math.pi / 2)
    val_noise = torch.randn(lat_val.shape, generator=g)
    val_start, val_end = torch.zeros(n_val), torch.full((n_val,), frames * hop / sr)

    def pipe_with(module: nn.ModuleDict):
        view = copy.copy(pipe)  # same pipeline, other weights (the EMA's)
        view.transformer, view.projection_model = module["transformer"], module["projection_model"]
        view.control_adapter = module["control_adapter"] if "control_adapter" in module else None
        return view

    @torch.no_grad()
    def validate(module: nn.ModuleDict) -> float:
        was = module.training
        module.eval()
        loss = diffusion_loss(pipe_with(module), lat_val, val_noise, val_sigma, states_val, mask_val, val_start, val_end,
                              None, sigma_data, ctrl_val).item()
        module.train(was)
        return loss

    def batches(rng: np.random.Generator):
        idx = rng.integers(len(lat_train), size=cfg.batch_size)
        x0, sec_start, sec_end, *ctrl = make_batch(lat_train, silence, idx, cfg, fps, rng,
                                                   *([ctrl_train] if cfg.controls else []))
        noise = torch.randn_like(x0)
        sigma = sample_sigmas(cfg.batch_size, sigma_data)
        drop = torch.rand(cfg.batch_size) < cfg.cfg_dropout
        controls = drop_controls(ctrl[0], drop, cfg.control_dropout) if cfg.controls else None
        yield x0, noise, sigma, states_train[idx], mask_train[idx], sec_start, sec_end, drop, controls

    def loss(module: nn.ModuleDict, batch) -> tuple[torch.Tensor, dict]:
        *inputs, controls = batch
        return diffusion_loss(pipe_with(module), *inputs, sigma_data, controls), {}

    log = {
        "settings": settings_dict(cfg),
        "command": command,
        "dit_config": dit_config,
        "params": n_params,
        "sigma_data": sigma_data,
        "corpus": {"path": str(corpus.path), "key": corpus.key, "train_clips": len(train_clips), "val_clips": n_val},
        "autoencoder": {"path": str(vae_path), "sha256": vae_sha},
        "init_from": init_record,
        "prep_seconds": {"encode_latents": encode_seconds, "text": text_seconds},
    }
    log_fn(f"stable-audio-lite DiT: {n_params / 1e6:.2f} M params, {len(train_clips)} clips x {frames} frames, "
           f"sigma_data {sigma_data:.3f}; latents {encode_seconds:.0f} s, text {text_seconds:.0f} s")
    task = TrainingTask(model=parts, optimizer=opt, batches=batches, loss=loss, validate=validate)
    ema, finished = run_training(cfg, task, rng, log, log_fn, command)

    throughput = log["throughput"]
    throughput.update(steps_per_second=throughput["steps"] / max(throughput["train_seconds"], 1e-9),
                      total_seconds=time.perf_counter() - t_start)
    out = Path(cfg.out)
    if finished:
        parts.load_state_dict(ema.state_dict())  # the EMA weights are the model
        final = log["val"][-1]
        save_stable_audio_lite(pipe, out, vae_path, extra={"trained": {"steps": throughput["steps"],
                                                                        "val_loss_ema": final["ema"], "val_loss_raw": final["raw"]}})
        log_fn(f"done: {throughput['steps']} steps in {throughput['train_seconds']:.0f} s "
               f"({throughput['steps_per_second']:.2f} steps/s), val loss ema {final['ema']:.4f} raw {final['raw']:.4f} -> {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return log




def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_argv(DiTTrainingConfig, argv, __doc__.split("\n\n")[0])
    command = " ".join(["python -m accelerando.train.dit", *(sys.argv[1:] if argv is None else argv)])
    return train(cfg, log_fn=lambda *a: print(*a, flush=True), command=command)


if __name__ == "__main__":
    main()

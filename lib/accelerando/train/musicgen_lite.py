"""Train MusicGen-Lite (`accelerando.models.musicgen_lite`) on Codec-Lite tokens of the corpus.

    python -m accelerando.train.musicgen_lite --variant a --minutes 40 --threads 1 --out checkpoints/musicgen_lite_a
    python -m accelerando.train.musicgen_lite --variant b --minutes 40 --threads 1 --out checkpoints/musicgen_lite_b
    python -m accelerando.train.musicgen_lite --variant a --pattern flatten --minutes 40 --threads 1 --out checkpoints/musicgen_lite_a_flatten

Data: the `train_clips` training clips whose latents the codec fit cached (`train.codec.split_latents`),
tokenized by the committed codec (4 codebooks at 21.5 frames/s, 215 frames per 10 s clip), and
their captions through the frozen MiniLM. Model A learns whole clips after the caption prefix.
Model B learns the rest of a clip given its caption and its opening (a 1.5-4 s audio prompt,
drawn per batch), so its audio prompt is a style and tempo seed, not a copy of the target.

Recipe (MusicGen's, Copet et al. 2023, arXiv:2306.05284, at toy scale): AdamW (beta 0.9 / 0.99, weight decay 0.1 on matrices),
linear warm-up over the first 10% of the steps then a cosine to 10% of the peak, gradient
clipping at 1.0, gradient accumulation to an effective batch of `batch_size x accumulate` (32),
bf16 autocast where the CPU has AMX (`--precision`; fp32 elsewhere), condition
dropout for classifier-free guidance (all conditions at once in 10% of the rows, as MusicGen
does; for B also the audio prompt alone in 10% and the text alone in 5%), musical controls
(`controls=True`: each clip's annotated beats, downbeats and key as frame features added to the
inputs, `accelerando.musical_controls`; dropped with the text, and beat and key channels each in
`control_dropout` of the other rows), an EMA
of the weights, validation NLL per codebook every `val_every` steps, the three best checkpoints by
validation loss kept in `<out>/top3/` (not committed), the best one (EMA weights) written to
`<out>`, and the fixed prompts sampled every `sample_every` steps into the log with their
CLAP-Lite score. The budget is wall-clock: without `max_steps` the step count is estimated from
the first steps. The loop is `accelerando.train.run_training`: a run stopped before `max_steps`
continues where it stopped when run again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import TrainingTask, config_from_argv, resolve_threads, run_training, settings_dict
from ..models.musicgen_lite import MusicGenLite, inputs_and_labels, label_codebooks, step_controls
from ..musical_controls import CONTROL_CHANNELS, MusicalControls, control_features, drop_controls

FIXED_PROMPTS = (
    "A four-part chorale in D major for brass at 90 BPM, in 4/4",
    "A fiddle tune in G major for string quartet at 120 BPM, in 2/4, with a rock drum beat",
    "A renaissance piece in A minor for piano at 70 BPM, in 3/4",
)


@dataclass
class MusicGenLiteTrainingConfig:
    variant: str = "a"  # "a" (text prefix LM) or "b" (text + audio prompt, cross-attention)
    pattern: str = "delay"  # codebook pattern: "delay" (MusicGen's) or "flatten" (K x the steps)
    corpus: str = "full"
    codec: str = "checkpoints/codec_lite"
    autoencoder: str = "checkpoints/autoencoder_lite"
    out: str = "checkpoints/musicgen_lite_a"
    train_clips: int = 800  # the codec fit's clips (their latents are cached)
    val_clips: int = 64
    minutes: float = 40.0
    max_steps: int | None = None
    batch_size: int = 16
    accumulate: int = 2  # effective batch = batch_size x accumulate
    lr: float = 1.5e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    cond_dropout: float = 0.1  # rows trained with every condition dropped: CFG's unconditional branch
    prompt_dropout: float = 0.1  # model B: further rows without their audio prompt (text only)
    text_dropout: float = 0.05  # model B: further rows without their text (audio prompt only)
    prompt_seconds: tuple[float, float] = (1.5, 4.0)  # model B: audio prompt length range
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    ffn_size: int = 768
    dropout: float = 0.1
    init_from: str = ""  # a MusicGen-Lite checkpoint to start from (same architecture; its control projection may be absent)
    controls: bool = True  # beat / metre / key frame features added to the inputs
    control_dropout: float = 0.1  # per row, beat channels and key channels dropped independently
    val_every: int = 100
    sample_every: int = 300  # 0: never
    sample_seconds: float = 4.0
    seed: int = 0
    threads: int | None = None  # torch threads; None: every core
    precision: str | None = None  # "bf16" (autocast, fp32 master weights) or "fp32"; None: bf16 where the CPU has AMX
    steps_this_run: int | None = None  # stop this run after so many steps (resume state kept); None: its budget
    resume: bool = True  # continue from <out>/resume_state.pt when a stopped run left one
    log_every: int = 20


@torch.no_grad()
def token_nll(model: MusicGenLite, target: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
              context: torch.Tensor | None = None, prompt_codes: torch.Tensor | None = None,
              batch: int = 16, controls: torch.Tensor | None = None) -> torch.Tensor:
    """Per clip and codebook, the mean negative log-likelihood (nats per token) of `target` codes
    [N, K, T]. `context` [N, K, C] (model A): codes the model reads first, as MusicGen continues an
    audio prompt; their own tokens are not scored. `prompt_codes` [N, K, P] (model B): the audio
    prompt in its cross-attention memory. `controls` [N, F, C + T]: musical-control frame features
    of the frames read (models with control_channels). Returns [N, K]."""
    model.eval()
    cfg = model.config
    out = []
    for i in range(0, target.shape[0], batch):
        sl = slice(i, i + batch)
        codes = target[sl] if context is None else torch.cat([context[sl], target[sl]], -1)
        inputs, labels = inputs_and_labels(codes, cfg.codebook_size, cfg.pattern)
        c = 0 if context is None else context.shape[-1]
        if cfg.pattern == "delay":
            for k in range(labels.shape[1]):  # token (k, frame t) sits at step t + k; score frames >= c only
                labels[:, k, : c + k] = -100
        else:
            labels[:, 0, : c * cfg.codebooks] = -100
        ctrl = None if controls is None else step_controls(controls[sl], cfg.codebooks, cfg.pattern)
        logits = model(inputs, states[sl].float(), mask[sl], None if prompt_codes is None else prompt_codes[sl],
                       controls=ctrl)
        ce = nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), labels, ignore_index=-100, reduction="none")
        book, scored = label_codebooks(labels, cfg.codebooks), labels != -100
        out.append(torch.stack([ce[:, book == k].sum(-1) / scored[:, book == k].sum(-1).clamp(min=1)
                                for k in range(cfg.codebooks)], 1))  # [b, K]
    return torch.cat(out)


def token_split(codec, autoencoder, corpus, split: str, n: int, seed: int = 0) -> dict:
    """`n` clips of a corpus split as the LMs see them: codes [n, K, frames], the autoencoder
    latents [n, 64, frames] they quantize (cached in .cache/latents), caption states [n, L, 384]
    (fp16) and masks [n, L], captions, the clips and their musical-control features [n, F, frames]."""
    from ..models.text_encoder import shared_text_encoder
    from .codec import split_latents

    clips, latents = split_latents(codec.vae, autoencoder, corpus, split, n, seed)
    codes = torch.cat([codec.rvq.encode(z) for z in latents.split(64)])
    captions = [c.caption for c in clips]
    controls = torch.from_numpy(control_features([MusicalControls.from_clip(c) for c in clips], codes.shape[-1],
                                                 codec.frame_rate))
    encoder = shared_text_encoder()
    parts = [encoder.encode(captions[i:i + 128]) for i in range(0, len(captions), 128)]
    width = max(s.shape[1] for s, _ in parts)
    states = torch.cat([torch.nn.functional.pad(s, (0, 0, 0, width - s.shape[1])) for s, _ in parts]).half()
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts])
    return {"codes": codes, "latents": latents, "states": states, "mask": mask, "captions": captions, "clips": clips,
            "controls": controls}


def token_data(cfg: MusicGenLiteTrainingConfig, log_fn=print) -> dict:
    """The codec and the train and val token splits."""
    from ..data import build_corpus, preset
    from ..models.codec_lite import load_codec_lite

    t0 = time.perf_counter()
    codec = load_codec_lite(cfg.codec, cfg.autoencoder)
    corpus = build_corpus(preset(cfg.corpus, sample_rate=codec.sample_rate))
    data = {"codec": codec, "corpus": corpus,
            "train": token_split(codec, cfg.autoencoder, corpus, "train", cfg.train_clips, cfg.seed),
            "val": token_split(codec, cfg.autoencoder, corpus, "val", cfg.val_clips, cfg.seed)}
    log_fn(f"tokens: train {tuple(data['train']['codes'].shape)}, val {tuple(data['val']['codes'].shape)} "
           f"in {time.perf_counter() - t0:.0f} s")
    return data


def batch_inputs(split: dict, idx, variant: str, prompt_frames: int, special: int,
                 drop_text=None, drop_prompt=None, pattern: str = "delay", control_dropout: float | None = None) -> dict:
    """Model inputs and labels for clips `idx`: A the whole clip, B the clip after its first
    `prompt_frames` frames with those frames as the audio prompt. Text columns trimmed to the
    batch's longest caption. With `control_dropout` (not None), the clips' musical controls per
    step, zero where the text is dropped and beat / key channels dropped at that rate."""
    from ..models.musicgen_lite import null_condition

    codes = split["codes"][idx]
    mask = split["mask"][idx]
    width = int(mask.sum(1).max())
    states, mask = split["states"][idx, :width].float(), mask[:, :width]
    if drop_text is not None:
        states, mask = null_condition(states, mask, drop_text)
    prompt = prompt_mask = None
    if variant == "b":
        prompt, codes = codes[..., :prompt_frames], codes[..., prompt_frames:]
        prompt_mask = torch.ones(len(idx), prompt_frames, dtype=mask.dtype)
        if drop_prompt is not None:
            prompt_mask[drop_prompt] = 0
    inputs, labels = inputs_and_labels(codes, special, pattern)
    controls = None
    if control_dropout is not None:
        frames = split["controls"][idx][..., -codes.shape[-1]:]  # B: the frames after the prompt
        controls = step_controls(drop_controls(frames, drop_text, control_dropout), codes.shape[1], pattern)
    return {"inputs": inputs, "labels": labels, "text_states": states, "text_mask": mask,
            "prompt_codes": prompt, "prompt_mask": prompt_mask, "controls": controls}


def train(cfg: MusicGenLiteTrainingConfig, data: dict | None = None, log_fn=print, command: str | None = None) -> dict:
    """Run the training described by `cfg` on `data` (`token_data(cfg)` when None); returns the
    log (also written to cfg.out)."""
    from ..models.musicgen_lite import MusicGenLiteConfig, codebook_nll, save_musicgen_lite

    torch.set_num_threads(resolve_threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = data or token_data(cfg, log_fn)
    codec = data["codec"]
    train_set, val_set = data["train"], data["val"]
    k, size = codec.num_codebooks, codec.codebook_size
    frame_rate = codec.frame_rate
    clip_frames = int(train_set["codes"].shape[-1])
    p_lo, p_hi = (round(s * frame_rate) for s in cfg.prompt_seconds)
    if cfg.variant == "b" and not 1 <= p_lo <= p_hi < clip_frames:
        raise ValueError(f"prompt_seconds={cfg.prompt_seconds} gives {p_lo}..{p_hi} prompt frames of {clip_frames}-frame "
                         "clips: the prompt must leave part of the clip to learn")
    mcfg = MusicGenLiteConfig(variant=cfg.variant, pattern=cfg.pattern, codebooks=k, codebook_size=size, hidden_size=cfg.hidden_size,
                              layers=cfg.layers, heads=cfg.heads, ffn_size=cfg.ffn_size,
                              text_dim=train_set["states"].shape[-1], dropout=cfg.dropout,
                              max_prompt_frames=p_hi, control_channels=CONTROL_CHANNELS if cfg.controls else 0,
                              max_frames=clip_frames - (p_lo if cfg.variant == "b" else 0))
    model = MusicGenLite(mcfg).train()
    init_record = None
    if cfg.init_from:
        from ..checkpoint import file_sha256, load_checked
        from ..models.musicgen_lite import CONFIG_FILE, WEIGHTS_FILE

        saved = json.loads((Path(cfg.init_from) / CONFIG_FILE).read_text())["config"]
        if {**saved, "control_channels": mcfg.control_channels} != dataclasses.asdict(mcfg):
            raise ValueError(f"init_from={cfg.init_from}: its config {saved} is another architecture than this run's "
                             f"{dataclasses.asdict(mcfg)}; start from the same model or drop init_from")
        load_checked(model, Path(cfg.init_from) / WEIGHTS_FILE, new_parts=("control_proj.",))
        init_record = {"path": cfg.init_from, "sha256": file_sha256(Path(cfg.init_from) / WEIGHTS_FILE)}
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    val_prompt = round(sum(cfg.prompt_seconds) / 2 * frame_rate)

    def validate(m) -> list[float]:
        """Validation NLL per codebook: A whole clips, B each clip after its `val_prompt` frames
        (all clips have as many tokens, so the mean over clips is the mean over tokens)."""
        was = m.training
        codes, states, mask = val_set["codes"], val_set["states"], val_set["mask"]
        controls = val_set["controls"] if cfg.controls else None
        if cfg.variant == "b":
            nll = token_nll(m, codes[..., val_prompt:], states, mask, prompt_codes=codes[..., :val_prompt], batch=32,
                            controls=None if controls is None else controls[..., val_prompt:])
        else:
            nll = token_nll(m, codes, states, mask, batch=32, controls=controls)
        m.train(was)
        return nll.mean(0).tolist()

    # target_tokens: the tokens the loss scores (B's audio prompt is context, not target);
    # top: (val loss, step, path) of the best three EMA checkpoints
    state = {"target_tokens": 0, "top": []}

    def batches(rng: np.random.Generator):
        """One step's `accumulate` micro-batches, with one audio prompt length for all of them."""
        prompt_frames = int(rng.integers(p_lo, p_hi + 1))
        target_frames = clip_frames - (prompt_frames if cfg.variant == "b" else 0)
        state["target_tokens"] += cfg.batch_size * cfg.accumulate * k * target_frames
        for _ in range(cfg.accumulate):
            idx = torch.from_numpy(rng.integers(len(train_set["codes"]), size=cfg.batch_size))
            u = torch.from_numpy(rng.random(cfg.batch_size))
            both, only_prompt = cfg.cond_dropout, cfg.cond_dropout + cfg.prompt_dropout
            drop_prompt = u < only_prompt
            drop_text = (u < both) | ((u >= only_prompt) & (u < only_prompt + cfg.text_dropout))
            yield batch_inputs(train_set, idx, cfg.variant, prompt_frames, size, drop_text, drop_prompt, cfg.pattern,
                               cfg.control_dropout if cfg.controls else None)

    def loss(m: MusicGenLite, b: dict) -> tuple[torch.Tensor, dict]:
        logits = m(b["inputs"], b["text_states"], b["text_mask"], b["prompt_codes"], b["prompt_mask"],
                   controls=b["controls"])
        nll = codebook_nll(logits.float(), b["labels"], k)  # [K]
        return nll.mean(), {"per_codebook": nll}

    out = Path(cfg.out)

    def keep_top(step: int, row: dict, ema: MusicGenLite) -> None:
        top = state["top"]
        entry = (float(np.mean(row["ema"])), step, out / "top3" / f"step-{step:05d}")
        if len(top) == 3 and entry > top[-1]:  # not among the best three: nothing to write
            return
        save_musicgen_lite(ema, entry[2], cfg.codec, extra={"trained": {"step": step, "val_nll": entry[0]}})
        top.append(entry)
        top.sort()
        for _, _, old in top[3:]:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        del top[3:]

    def sample(step: int, ema: MusicGenLite) -> None:
        if cfg.sample_every and step % cfg.sample_every == 0:
            log["samples"].append({"step": step, **sample_fixed_prompts(ema, codec, cfg, val_set)})

    log = {"settings": settings_dict(cfg),
           "command": command, "model_config": dataclasses.asdict(mcfg), "params": model.num_parameters(),
           "train_clips": len(train_set["codes"]), "val_clips": len(val_set["codes"]),
           "frames_per_clip": int(train_set["codes"].shape[-1]), "frame_rate": frame_rate, "samples": [],
           "init_from": init_record}
    log_fn(f"musicgen-lite {cfg.variant}: {model.num_parameters() / 1e6:.2f} M params, "
           f"{len(train_set['codes'])} clips x {train_set['codes'].shape[-1]} frames x {k} codebooks")
    task = TrainingTask(model=model, optimizer=opt, batches=batches, loss=loss, validate=validate,
                        on_validation=keep_top, on_step=sample, state=state)
    ema, finished = run_training(cfg, task, rng, log, log_fn, command)

    throughput = log["throughput"]
    steps = throughput["steps"]
    throughput.update(seconds_per_step=throughput["train_seconds"] / max(steps, 1),
                      tokens_per_step=state["target_tokens"] / max(steps, 1))
    if finished:
        from ..checkpoint import load_checked
        from ..models.musicgen_lite import WEIGHTS_FILE

        best_loss, best_step, best_path = state["top"][0]
        load_checked(ema, best_path / WEIGHTS_FILE)
        log["best"] = {"step": best_step, "val_nll": best_loss}
        save_musicgen_lite(ema, out, cfg.codec, extra={"trained": log["best"]})
        log_fn(f"done: {steps} steps in {throughput['train_seconds']:.0f} s; best val nll {best_loss:.4f} "
               f"at step {best_step} -> {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


@torch.no_grad()
def sample_fixed_prompts(model, codec, cfg: MusicGenLiteTrainingConfig, val_set: dict) -> dict:
    """The fixed prompts (model B: with the opening of a validation clip as audio prompt), decoded,
    scored by CLAP-Lite when its checkpoint is present."""
    from ..models.musicgen_lite import frames_for, generate
    from ..models.text_encoder import shared_text_encoder

    states, mask = shared_text_encoder().encode(list(FIXED_PROMPTS))
    prompt = None
    if cfg.variant == "b":
        prompt = val_set["codes"][: len(FIXED_PROMPTS), :, : round(3 * codec.frame_rate)]
    t0 = time.perf_counter()
    frames = frames_for(cfg.sample_seconds, codec.frame_rate)
    controls = None
    if model.config.control_channels:
        controls = torch.from_numpy(control_features([MusicalControls.from_caption(p, cfg.sample_seconds)
                                                      for p in FIXED_PROMPTS], frames, codec.frame_rate))
    codes, stats = generate(model, states, mask, frames, prompt_codes=prompt,
                            guidance=3.0, seed=cfg.seed, frame_rate=codec.frame_rate, controls=controls)
    wav = codec.decode(codes)
    row = {"generate_s": time.perf_counter() - t0, "tokens_per_second": stats.tokens_per_second}
    try:
        from ..models.clap_lite import CLAPLite
        from ..models.musicgen_lite import MusicGenLitePipeline
        from ..checkpoint import CHECKPOINTS

        clap = CLAPLite.from_pretrained(CHECKPOINTS / "clap_lite")
        row["clap"] = MusicGenLitePipeline(model, codec, clap=clap).clap_scores(wav, list(FIXED_PROMPTS)).tolist()
    except FileNotFoundError:
        pass
    return row


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_argv(MusicGenLiteTrainingConfig, argv, __doc__.split("\n\n")[0])
    command = " ".join(["python -m accelerando.train.musicgen_lite", *(sys.argv[1:] if argv is None else argv)])
    return train(cfg, log_fn=lambda *a: print(*a, flush=True), command=command)


if __name__ == "__main__":
    main()

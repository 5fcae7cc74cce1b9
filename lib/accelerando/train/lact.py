"""Train LaCT models and their matched baselines: LaCT-Music on Codec-Lite tokens, LaCT-ASR on the
eSpeak NG speech corpus.

    python -m accelerando.train.lact --task music --architecture lact --out checkpoints/lact_music
    python -m accelerando.train.lact --task music --architecture window --out checkpoints/lact_music_window
    python -m accelerando.train.lact --task asr --architecture lact --out checkpoints/lact_asr

`--architecture` picks the model: "lact" (window attention + fast weights), "window" (the same
without fast weights, its feed-forward widened to the same parameter count) or "full" (the same
with a window covering the whole training sequence: a standard transformer). The three runs of a
task share the data, the tokenizer, the steps and the seed, so they differ in the architecture
alone. Every run goes through `train.run_training` (EMA, warm-up-cosine, resumable state).
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

ARCHITECTURES = ("lact", "window", "full")


@dataclass
class LaCTTrainingConfig:
    task: str = "music"  # "music" (Codec-Lite tokens, text-conditioned) or "asr" (speech, CTC)
    architecture: str = "lact"  # "lact", "window" (no fast weights) or "full" (standard attention)
    out: str = "checkpoints/lact_music"
    # data: music
    corpus: str = "full"
    codec: str = "checkpoints/codec_lite"
    autoencoder: str = "checkpoints/autoencoder_lite"
    train_clips: int = 800
    val_clips: int = 64
    cond_dropout: float = 0.1
    # data: asr
    utterances: int = 2000
    utterances_per_sequence: int = 4  # asr: a training sequence joins 1..this many utterances of one voice
    # model
    dim: int = 192
    heads: int = 4
    layers: int = 4
    window: int = 64  # attention keys before each token (music steps, or 40 ms speech frames)
    chunk: int = 64  # tokens per fast-weight update
    ttt_heads: int = 2
    fast_optimizer: str = "muon"  # the fast weights' update: "muon", "sgd" or "adam"
    dropout: float = 0.1
    # optimisation
    minutes: float = 40.0
    max_steps: int | None = None
    batch_size: int = 16
    accumulate: int = 1
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    val_every: int = 100
    seed: int = 0
    threads: int | None = None
    precision: str | None = None
    steps_this_run: int | None = None
    resume: bool = True
    log_every: int = 20

    def __post_init__(self):
        if self.task not in ("music", "asr"):
            raise ValueError(f"task={self.task!r}: use 'music' or 'asr'")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: use one of {ARCHITECTURES}")

    def layer(self) -> dict:
        return dict(dim=self.dim, heads=self.heads, window=self.window, chunk=self.chunk, ttt_heads=self.ttt_heads,
                    optimizer=self.fast_optimizer)


def _optimizer(model: nn.Module, cfg: LaCTTrainingConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)


# ---------------------------------------------------------------------------------------------
# Music: Codec-Lite tokens, as MusicGen-Lite's model A trains on them
# ---------------------------------------------------------------------------------------------


def music_config(cfg: LaCTTrainingConfig, codebooks: int, codebook_size: int, text_dim: int, frames: int):
    from ..models.lact_music import LaCTMusicConfig, matched_baseline

    lact = LaCTMusicConfig(codebooks=codebooks, codebook_size=codebook_size, layers=cfg.layers, text_dim=text_dim,
                           max_frames=frames, dropout=cfg.dropout, layer=cfg.layer())
    if cfg.architecture == "lact":
        return lact
    return matched_baseline(lact, cfg.window if cfg.architecture == "window" else None)


def train_music(cfg: LaCTTrainingConfig, data: dict | None = None, log_fn=print, command: str | None = None) -> dict:
    from ..models.lact_music import LaCTMusicLM, save_lact_music
    from ..models.musicgen_lite import codebook_nll
    from .musicgen_lite import MusicGenLiteTrainingConfig, batch_inputs, token_data, token_nll

    torch.set_num_threads(resolve_threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if data is None:
        data = token_data(MusicGenLiteTrainingConfig(corpus=cfg.corpus, codec=cfg.codec, autoencoder=cfg.autoencoder,
                                                     train_clips=cfg.train_clips, val_clips=cfg.val_clips,
                                                     seed=cfg.seed), log_fn)
    codec, train_set, val_set = data["codec"], data["train"], data["val"]
    k, size = codec.num_codebooks, codec.codebook_size
    mcfg = music_config(cfg, k, size, train_set["states"].shape[-1], int(train_set["codes"].shape[-1]))
    model = LaCTMusicLM(mcfg).train()

    def batches(rng: np.random.Generator):
        for _ in range(cfg.accumulate):
            idx = torch.from_numpy(rng.integers(len(train_set["codes"]), size=cfg.batch_size))
            drop = torch.from_numpy(rng.random(cfg.batch_size) < cfg.cond_dropout)
            yield batch_inputs(train_set, idx, "a", 0, size, drop_text=drop)

    def loss(m: LaCTMusicLM, b: dict) -> tuple[torch.Tensor, dict]:
        nll = codebook_nll(m(b["inputs"], b["text_states"], b["text_mask"]).float(), b["labels"], k)
        return nll.mean(), {"per_codebook": nll}

    def validate(m: LaCTMusicLM) -> list[float]:
        was = m.training
        nll = token_nll(m, val_set["codes"], val_set["states"], val_set["mask"], batch=32)
        m.train(was)
        return nll.mean(0).tolist()

    return _run(cfg, model, rng, batches, loss, validate, log_fn, command,
                save=lambda m, path, extra: save_lact_music(m, path, cfg.codec, extra=extra),
                log={"model_config": dataclasses.asdict(mcfg), "frame_rate": codec.frame_rate,
                     "train_clips": len(train_set["codes"]), "val_clips": len(val_set["codes"])})


# ---------------------------------------------------------------------------------------------
# Speech recognition: log-mel frames, CTC over characters
# ---------------------------------------------------------------------------------------------


def speech_split(corpus, split: str) -> dict:
    """`lact_asr.speech_features` of one split of a speech corpus."""
    from ..models.lact_asr import speech_features

    items = list(corpus.filter(split=split))
    if not items:
        raise ValueError(f"the speech corpus at {corpus.path} has no {split!r} utterances: build it with more")
    return speech_features(items)


def same_voice_groups(voices: list[str], rng: np.random.Generator, n: int, most: int) -> list[list[int]]:
    """`n` groups of 1..`most` distinct utterances by one voice (voices drawn by their share)."""
    by_voice: dict[str, list[int]] = {}
    for i, v in enumerate(voices):
        by_voice.setdefault(v, []).append(i)
    groups = []
    for _ in range(n):
        pool = by_voice[voices[int(rng.integers(len(voices)))]]
        k = min(int(rng.integers(1, most + 1)), len(pool))
        groups.append([int(i) for i in rng.choice(pool, size=k, replace=False)])
    return groups


def train_asr(cfg: LaCTTrainingConfig, data: dict | None = None, log_fn=print, command: str | None = None) -> dict:
    from ..data import SpeechConfig, build_speech_corpus
    from ..models.lact_asr import LaCTASR, LaCTASRConfig, ctc_batch, ctc_loss, matched_baseline, save_lact_asr

    torch.set_num_threads(resolve_threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if data is None:
        t0 = time.perf_counter()
        corpus = build_speech_corpus(SpeechConfig(n_utterances=cfg.utterances, seed=cfg.seed))
        data = {"train": speech_split(corpus, "train"), "val": speech_split(corpus, "val")}
        log_fn(f"speech: {len(data['train']['texts'])} train, {len(data['val']['texts'])} val utterances "
               f"in {time.perf_counter() - t0:.0f} s")
    train_set, val_set = data["train"], data["val"]
    acfg = LaCTASRConfig(layers=cfg.layers, dropout=cfg.dropout, layer=cfg.layer())
    if cfg.architecture != "lact":
        acfg = matched_baseline(acfg, cfg.window if cfg.architecture == "window" else None)
    model = LaCTASR(acfg).train()

    def batches(rng: np.random.Generator):
        for _ in range(cfg.accumulate):
            groups = same_voice_groups(train_set["voices"], rng, cfg.batch_size, cfg.utterances_per_sequence)
            yield ctc_batch(train_set, groups)

    def loss(m: LaCTASR, b: dict) -> tuple[torch.Tensor, dict]:
        return ctc_loss(m, b), {}

    @torch.no_grad()
    def validate(m: LaCTASR) -> float:
        """Mean CTC loss per utterance over the validation split."""
        was, n, total = m.training, len(val_set["texts"]), 0.0
        m.eval()
        for i in range(0, n, 32):
            groups = [[j] for j in range(i, min(i + 32, n))]
            total += float(loss(m, ctc_batch(val_set, groups))[0]) * len(groups)
        m.train(was)
        return total / n

    return _run(cfg, model, rng, batches, loss, validate, log_fn, command,
                save=lambda m, path, extra: save_lact_asr(m, path, extra=extra),
                log={"model_config": dataclasses.asdict(acfg), "train_utterances": len(train_set["texts"]),
                     "val_utterances": len(val_set["texts"])})


# ---------------------------------------------------------------------------------------------
# The shared part: the loop, the best checkpoint, the log
# ---------------------------------------------------------------------------------------------


def _run(cfg: LaCTTrainingConfig, model: nn.Module, rng: np.random.Generator, batches, loss, validate, log_fn, command,
         save, log: dict) -> dict:
    """Train through `run_training`, keep the EMA model of the lowest validation loss, save it and
    the log (with the command) to cfg.out."""
    out = Path(cfg.out)
    state = {"best": None}
    params = sum(p.numel() for p in model.parameters())
    log = {"settings": settings_dict(cfg), "command": command, "params": params, **log}
    log_fn(f"{cfg.task} {cfg.architecture}: {params / 1e6:.2f} M parameters")

    def keep_best(step: int, row: dict, ema: nn.Module) -> None:
        value = float(np.mean(row["ema"]))
        if state["best"] is None or value < state["best"][0]:
            state["best"] = (value, step)
            save(ema, out / "best", {"trained": {"step": step, "val_loss": value}})

    task = TrainingTask(model=model, optimizer=_optimizer(model, cfg), batches=batches, loss=loss, validate=validate,
                        on_validation=keep_best, state=state)
    ema, finished = run_training(cfg, task, rng, log, log_fn, command)
    if finished and state["best"] is not None:
        from ..checkpoint import load_checked

        best_dir = out / "best"
        weights = next(best_dir.glob("*.safetensors"))
        load_checked(ema, weights)
        log["best"] = {"step": state["best"][1], "val_loss": state["best"][0]}
        save(ema, out, {"trained": log["best"]})
        for f in best_dir.iterdir():
            f.unlink()
        best_dir.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_argv(LaCTTrainingConfig, argv, __doc__.split("\n\n")[0])
    command = " ".join(["python -m accelerando.train.lact", *(sys.argv[1:] if argv is None else argv)])
    run = train_music if cfg.task == "music" else train_asr
    return run(cfg, log_fn=lambda *a: print(*a, flush=True), command=command)


if __name__ == "__main__":
    main()

"""Train CLAP-Lite (`accelerando.models.clap_lite`) on the offline corpus's clips and captions.

    python -m accelerando.train.clap --corpus small --minutes 30 --out checkpoints/clap_lite

Symmetric InfoNCE (CLIP, Radford et al. 2021) over in-batch pairs (random `crop_seconds` crops
of the training clips, the crop being the augmentation; the caption of the whole clip), AdamW,
linear warm-up then cosine decay over whichever budget ends first, `minutes` of wall time or
`max_steps`. The text tower is frozen, so each caption's MiniLM sentence vector is computed
once. Evaluation, on whole clips of `eval_split` (and `final_splits` at the end):

- retrieval text->audio and audio->text recall@1/5/10 over the split's N clips (chance k/N);
- zero-shot classification by prompts, with chance levels: key ("music in D major", 1 of the
  corpus's keys), tempo band ("music at 58 / 78 / 105 BPM" for < 66, 66-90, >= 90 BPM) and
  instrument family ("music with strings"; correct if the family is among the clip's; chance
  = the mean share of the clip's families among the candidates; "majority" = always guessing
  the commonest family, Drums, which the caption-trained model must beat to mean anything).

Writes `<out>/model.safetensors` (fp16), `<out>/config.json` and `<out>/train_log.json`
(settings, command, per-step loss / lr / temperature, evaluations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..models.clap_lite import CLAPLite, clap_lite_config, contrastive_loss

# -- settings ---------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    corpus: str = "small"  # accelerando.data preset
    model: str = "small"  # CLAP-Lite preset (models.clap_lite.PRESETS)
    out: str = "checkpoints/clap_lite"
    minutes: float = 30.0  # wall-time budget, evaluation included
    max_steps: int | None = None  # None: the time budget alone ends training
    batch_size: int = 32  # in-batch negatives: 31 per positive
    crop_seconds: float = 5.0  # random crop per clip and step (shorter clips are used whole)
    lr: float = 1e-3
    weight_decay: float = 0.05  # on conv and linear weights only
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_split: str = "val"
    eval_every: int = 50  # steps
    final_splits: tuple[str, ...] = ("val", "test")
    seed: int = 0
    threads: int = 2  # the machine's cores
    ks: tuple[int, ...] = (1, 5, 10)

    def __post_init__(self) -> None:
        self.final_splits, self.ks = tuple(self.final_splits), tuple(self.ks)
        if self.minutes <= 0 and self.max_steps is None:
            raise ValueError("TrainConfig: give a positive `minutes` budget or `max_steps`")
        if self.batch_size < 2:
            raise ValueError(f"TrainConfig: batch_size={self.batch_size}: contrastive training needs >= 2 pairs")
        if self.crop_seconds <= 0:
            raise ValueError(f"TrainConfig: crop_seconds={self.crop_seconds} must be positive")


# Zero-shot tasks: tempo bands (BPM) and the prompt for each; the corpus's tempi run ~45-130 BPM.
TEMPO_BANDS = [("slow", 0.0, 66.0, 58), ("moderate", 66.0, 90.0, 78), ("fast", 90.0, math.inf, 105)]


def key_prompt(name: str) -> str:
    return f"music in {name}"


def family_prompt(family: str) -> str:
    return f"music with {family.lower()}"


def tempo_prompt(bpm: int) -> str:
    return f"music at {bpm} BPM"


def tempo_band(bpm: float) -> int:
    return next(i for i, (_, lo, hi, _) in enumerate(TEMPO_BANDS) if lo <= bpm < hi)


# -- data -------------------------------------------------------------------------------------------


def load_clips(corpus, split: str) -> tuple[list, list[torch.Tensor]]:
    clips = [c for c in corpus.clips if c.split == split]
    if not clips:
        raise ValueError(f"split {split!r} of {corpus} has no clips; splits: {corpus.splits}")
    return clips, [torch.from_numpy(np.ascontiguousarray(c.load(), dtype=np.float32)).reshape(-1) for c in clips]


def random_crops(wavs: list[torch.Tensor], idx: np.ndarray, n: int, rng: np.random.Generator) -> torch.Tensor:
    """[len(idx), n] crops starting at uniform offsets (a clip shorter than n is zero-padded)."""
    out = torch.zeros(len(idx), n)
    for row, i in enumerate(idx):
        w = wavs[i]
        start = int(rng.integers(0, max(len(w) - n, 0) + 1))
        piece = w[start:start + n]
        out[row, :len(piece)] = piece
    return out


def sentence_vectors(model: CLAPLite, texts: list[str], chunk: int = 64) -> torch.Tensor:
    """Frozen MiniLM sentence vectors [N, 384], computed once."""
    return torch.cat([model.text_encoder.embed(texts[i:i + chunk]) for i in range(0, len(texts), chunk)])


# -- evaluation -------------------------------------------------------------------------------------


def recall_at_k(sim: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """sim [N queries, N items], item i the match of query i: share of queries whose match ranks in the top k.
    Ties count against the match, so a collapsed model (all scores equal) gets 0, not 1."""
    rank = (sim >= sim.diag()[:, None]).sum(1) - 1  # [N] other items scored at or above the match (0 = first)
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


@torch.no_grad()
def audio_embeddings(model: CLAPLite, wavs: list[torch.Tensor], sr: int, chunk: int = 16) -> torch.Tensor:
    n = min(len(w) for w in wavs)  # whole clips, cut to a common length for batching
    return torch.cat([model.embed_audio(torch.stack([w[:n] for w in wavs[i:i + chunk]]), sr)
                      for i in range(0, len(wavs), chunk)])


def zero_shot(model: CLAPLite, audio: torch.Tensor, clips: list, all_keys: list[str], all_families: list[str]) -> dict:
    """Top-1 accuracy of prompt classification for key, tempo band and instrument family, with chance."""
    out = {}
    key_t = model.embed_text([key_prompt(k) for k in all_keys])  # [K, D]
    truth = torch.tensor([all_keys.index(c.key["name"]) for c in clips])
    pred = (audio @ key_t.T).argmax(1)
    majority = float(torch.bincount(truth).max()) / len(clips)
    out["key"] = {"accuracy": float((pred == truth).float().mean()), "chance": 1 / len(all_keys),
                  "majority": majority, "classes": len(all_keys)}

    tempo_t = model.embed_text([tempo_prompt(b[3]) for b in TEMPO_BANDS])
    truth = torch.tensor([tempo_band(c.tempo_bpm) for c in clips])
    pred = (audio @ tempo_t.T).argmax(1)
    out["tempo_band"] = {"accuracy": float((pred == truth).float().mean()), "chance": 1 / len(TEMPO_BANDS),
                         "majority": float(torch.bincount(truth, minlength=len(TEMPO_BANDS)).max()) / len(clips),
                         "classes": len(TEMPO_BANDS)}

    fam_t = model.embed_text([family_prompt(f) for f in all_families])
    pred = (audio @ fam_t.T).argmax(1)
    hits = [all_families[int(p)] in c.families for p, c in zip(pred, clips)]
    chance = float(np.mean([len(set(c.families) & set(all_families)) / len(all_families) for c in clips]))
    # majority: always guessing the commonest family (Drums is in ~60% of the corpus's clips)
    majority = max(float(np.mean([f in c.families for c in clips])) for f in all_families)
    out["family"] = {"accuracy": float(np.mean(hits)), "chance": chance, "majority": majority,
                     "classes": len(all_families)}
    return out


def evaluate(model: CLAPLite, clips: list, wavs: list[torch.Tensor], text: torch.Tensor, sr: int,
             ks: tuple[int, ...], all_keys: list[str], all_families: list[str]) -> dict:
    model.eval()
    with torch.no_grad():
        a = audio_embeddings(model, wavs, sr)  # [N, D]
        t = model.text_embedding(text)  # [N, D]
        sim = a @ t.T  # [N audio, N text]
        loss = float(contrastive_loss(a, t, model.scale()))
    n = len(clips)
    ks = tuple(k for k in ks if k <= n) or (1,)
    return {
        "n_clips": n,
        "loss": loss,
        "text_to_audio": recall_at_k(sim.T, ks),
        "audio_to_text": recall_at_k(sim, ks),
        "chance": {f"R@{k}": k / n for k in ks},
        "zero_shot": zero_shot(model, a, clips, all_keys, all_families),
    }


# -- training ---------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine to 0 as `progress` (0..1) runs out."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(cfg: TrainConfig, corpus=None, log_fn=print) -> tuple[CLAPLite, dict]:
    """Train, evaluate, save. Returns the model (eval mode, fp32) and the training log."""
    from ..data import build_corpus, preset

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    t_start = time.perf_counter()

    # data
    corpus = corpus if corpus is not None else build_corpus(preset(cfg.corpus))
    sr = corpus.clips[0].sample_rate  # the model runs at its own rate (32 kHz); embed_audio resamples
    model = CLAPLite(clap_lite_config(cfg.model))
    train_clips, train_wavs = load_clips(corpus, "train")
    train_text = sentence_vectors(model, [c.caption for c in train_clips])  # [N, 384]
    all_keys = sorted({c.key["name"] for c in corpus.clips})
    all_families = sorted({f for c in corpus.clips for f in c.families})
    eval_sets = {s: load_clips(corpus, s) for s in dict.fromkeys((cfg.eval_split, *cfg.final_splits)) if s in corpus.splits}
    eval_text = {s: sentence_vectors(model, [c.caption for c in clips]) for s, (clips, _) in eval_sets.items()}

    def run_eval(split: str) -> dict:
        clips, wavs = eval_sets[split]
        return evaluate(model, clips, wavs, eval_text[split], sr, cfg.ks, all_keys, all_families)

    # model and optimiser: no weight decay on norms, biases and the temperature
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n_params = sum(p.numel() for p in model.parameters())
    batch = min(cfg.batch_size, len(train_clips))
    crop = int(cfg.crop_seconds * sr)
    log = {"train_config": dataclasses.asdict(cfg), "model_config": model.config.to_dict(),
           "command": " ".join(sys.argv), "trainable_params": n_params, "n_train": len(train_clips),
           "steps": [], "evals": []}
    budget = cfg.minutes * 60
    log_fn(f"CLAP-Lite: {n_params / 1e6:.2f} M trainable params, {len(train_clips)} train clips, batch {batch}, "
           f"{cfg.crop_seconds} s crops, budget {cfg.minutes} min / {cfg.max_steps} steps")

    if cfg.eval_split in eval_sets:
        log["evals"].append({"step": 0, "seconds": time.perf_counter() - t_start, **run_eval(cfg.eval_split)})
    t_train = time.perf_counter()
    step, order = 0, np.array([], dtype=int)
    while True:
        elapsed = time.perf_counter() - t_train
        progress = max(elapsed / budget if budget > 0 else 0.0, step / cfg.max_steps if cfg.max_steps else 0.0)
        if progress >= 1:
            break
        if len(order) < batch:  # epochs without replacement
            order = np.concatenate([order, rng.permutation(len(train_clips))])
        idx, order = order[:batch], order[batch:]
        lr = lr_at(cfg, step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        wav = random_crops(train_wavs, idx, crop, rng)  # [B, crop]
        a = model.audio_embedding(wav)  # [B, D]
        t = model.text_embedding(train_text[idx])  # [B, D]
        loss = contrastive_loss(a, t, model.scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        log["steps"].append({"step": step, "seconds": round(time.perf_counter() - t_start, 2), "loss": loss.item(),
                             "lr": lr, "temperature": 1 / model.scale().item()})
        if step % 10 == 0:
            log_fn(f"step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}  T {1 / model.scale().item():.4f}  "
                   f"{time.perf_counter() - t_start:.0f} s")
        if cfg.eval_every and step % cfg.eval_every == 0 and cfg.eval_split in eval_sets:
            ev = run_eval(cfg.eval_split)
            log["evals"].append({"step": step, "seconds": time.perf_counter() - t_start, **ev})
            log_fn(f"  eval {cfg.eval_split}: loss {ev['loss']:.3f}  t->a {ev['text_to_audio']}  "
                   f"a->t {ev['audio_to_text']}  chance {ev['chance']}")

    log["final"] = {s: run_eval(s) for s in eval_sets if s in cfg.final_splits}
    log["total_steps"], log["wall_seconds"] = step, time.perf_counter() - t_start
    model.eval()
    if cfg.out:
        out = model.save_pretrained(cfg.out)
        (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        log_fn(f"saved {out} ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")
    for s, ev in log["final"].items():
        log_fn(f"final {s}: t->a {ev['text_to_audio']} a->t {ev['audio_to_text']} chance {ev['chance']}")
        log_fn(f"  zero-shot {json.dumps(ev['zero_shot'])}")
    return model, log


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    p.add_argument("--corpus", default=defaults.corpus, help="accelerando.data preset (small, full, tiny)")
    p.add_argument("--model", default=defaults.model, help="CLAP-Lite preset (small, tiny)")
    p.add_argument("--minutes", type=float, default=defaults.minutes, help="wall-time budget, evaluation included")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--out", default=defaults.out)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--crop-seconds", type=float, default=defaults.crop_seconds)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    train(TrainConfig(**{k: v for k, v in vars(args).items()}))


if __name__ == "__main__":
    main()

"""Train CLAP-Lite (`accelerando.models.clap_lite`) on the offline corpus's clips and captions.

    python -m accelerando.train.clap --corpus full --model small --minutes 25 --threads 1 --eval-every 100 --out checkpoints/clap_lite

The corpus is built (or loaded from data/) at the model's sample rate (22.05 kHz by default).
Symmetric InfoNCE (CLIP, Radford et al. 2021) over in-batch pairs: random `crop_seconds` crops
of the training clips and, with augmentation (the default),

- pitch/tempo shift: with probability `shift_prob` a crop is resampled by 2^(k/12), k uniform in
  +-1..`max_shift`, which moves every pitch k semitones and the tempo by the same factor (the
  tape-speed trick); the caption's key and BPM are rewritten to match (`shift_truth`);
- caption augmentation: each step each clip gets one caption drawn from its ground truth
  (`augment_caption`): with probability `original_caption_prob` the corpus caption, otherwise
  a short one naming a random subset of key, tempo, instruments (ensemble, instrument names or
  families), genre and drums, in random order. Identical captions within a batch are not
  counted as negatives of each other (`contrastive_loss(same=...)`).

None of the drawn captions is a zero-shot prompt below. AdamW, linear warm-up then cosine decay
over whichever budget ends first, `minutes` of wall time or `max_steps`. The text tower is
frozen, so each distinct caption's MiniLM sentence vector is computed once (cached). Evaluation, on whole clips of `eval_split` (and `final_splits` at the end):

- retrieval text->audio and audio->text recall@1/5/10 over the split's N clips (chance k/N);
- zero-shot classification by prompts, with chance levels: key ("music in D major", 1 of the
  corpus's keys), tempo band ("music at 58 / 78 / 105 BPM" for < 66, 66-90, >= 90 BPM) and
  instrument family ("music with strings"; correct if the family is among the clip's; chance
  = the mean share of the clip's families among the candidates; "majority" = always guessing
  the commonest family, Drums, which the caption-trained model must beat to mean anything).

Writes `<out>/model.safetensors` (fp16), `<out>/config.json` and `<out>/train_log.json`
(settings, command, the augmentation used with example captions, per-step loss / lr /
temperature, evaluations, steps/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..audio import resample
from . import warmup_cosine
from ..models.clap_lite import CLAPLite, clap_lite_config, contrastive_loss

# -- settings ---------------------------------------------------------------------------------------


@dataclass
class CLAPTrainingConfig:
    corpus: str = "full"  # accelerando.data preset, built at the model's sample rate
    model: str = "small"  # CLAP-Lite preset (models.clap_lite.PRESETS)
    out: str = "checkpoints/clap_lite"
    minutes: float = 30.0  # wall-time budget, evaluation included
    max_steps: int | None = None  # None: the time budget alone ends training
    batch_size: int = 32  # in-batch negatives: 31 per positive
    crop_seconds: float = 5.0  # random crop per clip and step (shorter clips are used whole)
    caption_aug: bool = True  # draw a ground-truth caption per clip and step (augment_caption)
    original_caption_prob: float = 0.3  # share of the drawn captions that are the corpus caption
    shift_prob: float = 0.5  # share of crops pitch/tempo-shifted by resampling
    max_shift: int = 3  # semitones: k in +-1..max_shift
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
            raise ValueError("CLAPTrainingConfig: give a positive `minutes` budget or `max_steps`")
        if self.batch_size < 2:
            raise ValueError(f"CLAPTrainingConfig: batch_size={self.batch_size}: contrastive training needs >= 2 pairs")
        if self.crop_seconds <= 0:
            raise ValueError(f"CLAPTrainingConfig: crop_seconds={self.crop_seconds} must be positive")
        if not (0 <= self.shift_prob <= 1 and 0 <= self.original_caption_prob <= 1):
            raise ValueError("CLAPTrainingConfig: shift_prob and original_caption_prob are probabilities in [0, 1]")
        if not 0 <= self.max_shift <= 6:
            raise ValueError(f"CLAPTrainingConfig: max_shift={self.max_shift}: use 0..6 semitones")


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


# -- augmentation: captions from ground truth, pitch/tempo shift --------------------------------------


def shift_truth(clip, semitones: int = 0) -> dict:
    """The clip's ground truth for captions, after resampling its audio by 2^(semitones/12): the
    tonic moves `semitones` (mode kept, the corpus's spelling), every tempo scales by the factor."""
    from ..data.arrange import ENSEMBLE_PROGRAMS, key_name
    from ..data.scores import GENRES

    f = 2.0 ** (semitones / 12)
    m = clip.meta
    pitched = [i for i in clip.instruments if not i["is_drum"]]
    return {
        "key": key_name(clip.key["pitch_class"] + semitones, clip.key["mode"]),
        "bpm": round(clip.tempo_bpm * f),
        "bpm_start": round(m.get("tempo_start_bpm", clip.tempo_bpm) * f),
        "bpm_end": round(m.get("tempo_end_bpm", clip.tempo_bpm) * f),
        # the ensemble's name when it plays 3+ parts, as the corpus captions do ("string quartet")
        "ensemble": ENSEMBLE_PROGRAMS[m["ensemble"]][0] if len(pitched) >= 3 and m.get("ensemble") in ENSEMBLE_PROGRAMS else None,
        "names": list(dict.fromkeys(i["name"].lower() for i in pitched)),
        "families": sorted({i["family"].lower() for i in clip.instruments}),
        "genre": GENRES[clip.genre].label if clip.genre in GENRES else clip.genre,
        "drums": m.get("drums"),
    }


def rewrite_caption(caption: str, clip, semitones: int) -> str:
    """The corpus caption with its key and BPMs moved as `shift_truth` moves them."""
    if not semitones:
        return caption
    t, f = shift_truth(clip, semitones), 2.0 ** (semitones / 12)
    caption = caption.replace(clip.key["name"], t["key"])
    return re.sub(r"\b(\d+)(?= BPM| to \d+ BPM)", lambda g: str(round(int(g.group(1)) * f)), caption)


def augment_caption(clip, rng: np.random.Generator, semitones: int = 0, original_prob: float = 0.3) -> str:
    """One caption drawn from the ground truth (after a `semitones` shift): the corpus caption
    (rewritten), or a random non-empty subset of key / tempo / instruments / genre / drums phrases
    in random order ("at 92 BPM, in the key of E major", "strings and drums"). None of them is a
    zero-shot prompt ("music in ...", "music at ...", "music with ...")."""
    if rng.random() < original_prob:
        return rewrite_caption(clip.caption, clip, semitones)
    t = shift_truth(clip, semitones)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    tempo = (f"{t['bpm']} BPM" if t["bpm_start"] == t["bpm_end"]
             else f"{'speeding up' if t['bpm_end'] > t['bpm_start'] else 'slowing down'} from {t['bpm_start']} to {t['bpm_end']} BPM")
    who = pick([n for n in (t["ensemble"], " and ".join(t["names"]), " and ".join(t["families"])) if n])
    phrases = {
        "key": pick([f"in {t['key']}", f"in the key of {t['key']}", t["key"]]),
        "tempo": pick([f"at {tempo}", f"tempo {tempo}", tempo]) if t["bpm_start"] == t["bpm_end"] else tempo,
        "who": pick([f"played by {who}", f"for {who}", who]),
        "genre": f"a {t['genre']}",
        "drums": f"with {t['drums']} drums" if t["drums"] else "without drums",
    }
    # key, tempo and instruments are the attributes to learn; genre and drums ride along sometimes
    names = [n for n in ("key", "tempo", "who") if rng.random() < 0.5] or [pick(["key", "tempo", "who"])]
    names += [n for n in ("genre", "drums") if rng.random() < 0.2]
    rng.shuffle(names)
    return ", ".join(phrases[n] for n in names)


AUGMENTATION_NOTE = ("captions: per clip and step, the corpus caption (key/BPM rewritten) with probability "
                     "original_caption_prob, else a random subset of {key, tempo, instruments, genre, drums} phrases "
                     "in random order (augment_caption); audio: random crop, resampled by 2^(k/12), k in "
                     "+-1..max_shift, with probability shift_prob, caption key and BPM rewritten to match")


# -- data -------------------------------------------------------------------------------------------


def load_clips(corpus, split: str, sr: int | None = None) -> tuple[list, list[torch.Tensor]]:
    """The split's clips and mono audio, resampled to `sr` if the corpus has another rate."""
    clips = [c for c in corpus.clips if c.split == split]
    if not clips:
        raise ValueError(f"split {split!r} of {corpus} has no clips; splits: {corpus.splits}")
    wavs = []
    for c in clips:
        w = torch.from_numpy(np.ascontiguousarray(c.load(), dtype=np.float32))
        w = w.mean(-1) if w.ndim == 2 else w  # (samples, channels) -> mono
        wavs.append(resample(w[None], c.sample_rate, sr)[0] if sr and sr != c.sample_rate else w)
    return clips, wavs


def random_crops(wavs: list[torch.Tensor], idx: np.ndarray, n: int, rng: np.random.Generator,
                 semitones: np.ndarray | None = None) -> torch.Tensor:
    """[len(idx), n] crops starting at uniform offsets (a clip shorter than n is zero-padded).
    semitones[row] != 0: a crop of n * 2^(k/12) samples linearly resampled to n, i.e. played
    faster/slower: pitch up/down k semitones, tempo times 2^(k/12)."""
    out = torch.zeros(len(idx), n)
    for row, i in enumerate(idx):
        w = wavs[i]
        k = 0 if semitones is None else int(semitones[row])
        m = round(n * 2.0 ** (k / 12))
        start = int(rng.integers(0, max(len(w) - m, 0) + 1))
        piece = w[start:start + m]
        if k:
            size = round(len(piece) * n / m)
            piece = F.interpolate(piece[None, None], size=size, mode="linear", align_corners=False)[0, 0]
        out[row, :len(piece)] = piece[:n]
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


def lr_at(cfg: CLAPTrainingConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine to 0 as `progress` (0..1) runs out."""
    return warmup_cosine(cfg.lr, step, cfg.warmup_steps, progress)


def evaluate_split(model: CLAPLite, corpus, split: str = "test", ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Retrieval recall@k both ways and zero-shot accuracy (with chance levels) on one split of
    `corpus` (whole clips, resampled to the model's rate): what `train` reports at the end."""
    sr = model.config.sample_rate
    clips, wavs = load_clips(corpus, split, sr)
    if not clips:
        raise ValueError(f"corpus {getattr(corpus, 'path', '')} has no {split!r} clips: choose one of {sorted(corpus.splits)}")
    all_keys = sorted({c.key["name"] for c in corpus.clips})
    all_families = sorted({f for c in corpus.clips for f in c.families})
    text = sentence_vectors(model, [c.caption for c in clips])
    return evaluate(model, clips, wavs, text, sr, ks, all_keys, all_families)


def train(cfg: CLAPTrainingConfig, corpus=None, log_fn=print, command: str | None = None) -> tuple[CLAPLite, dict]:
    """Train, evaluate, save. Returns the model (eval mode, fp32) and the training log;
    `command` is recorded in the log (the command line passes its own)."""
    from ..data import build_corpus, preset

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    t_start = time.perf_counter()

    # data, at the model's rate (a corpus given at another rate is resampled on loading)
    model = CLAPLite(clap_lite_config(cfg.model))
    sr = model.config.sample_rate
    corpus = corpus if corpus is not None else build_corpus(preset(cfg.corpus, sample_rate=sr))
    train_clips, train_wavs = load_clips(corpus, "train", sr)
    train_text = sentence_vectors(model, [c.caption for c in train_clips])  # [N, 384]
    text_cache: dict[str, torch.Tensor] = {}  # augmented caption -> MiniLM vector, filled as drawn

    def caption_vectors(texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in text_cache))
        if new:
            text_cache.update(zip(new, sentence_vectors(model, new)))
        return torch.stack([text_cache[t] for t in texts])
    all_keys = sorted({c.key["name"] for c in corpus.clips})
    all_families = sorted({f for c in corpus.clips for f in c.families})
    eval_sets = {s: load_clips(corpus, s, sr) for s in dict.fromkeys((cfg.eval_split, *cfg.final_splits)) if s in corpus.splits}
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
           "command": command, "trainable_params": n_params, "n_train": len(train_clips),
           "corpus": str(getattr(corpus, "path", "")), "sample_rate": sr,
           "augmentation": {"caption_aug": cfg.caption_aug, "original_caption_prob": cfg.original_caption_prob,
                            "shift_prob": cfg.shift_prob, "max_shift": cfg.max_shift, "note": AUGMENTATION_NOTE,
                            "examples": []},
           "steps": [], "evals": []}
    budget = cfg.minutes * 60
    log_fn(f"CLAP-Lite: {n_params / 1e6:.2f} M trainable params, {len(train_clips)} train clips at {sr} Hz, "
           f"batch {batch}, {cfg.crop_seconds} s crops, budget {cfg.minutes} min / {cfg.max_steps} steps; "
           f"augmentation: captions {cfg.caption_aug} (original {cfg.original_caption_prob}), "
           f"shift p={cfg.shift_prob} +-{cfg.max_shift} st")

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
        shifts = np.zeros(len(idx), dtype=int)
        if cfg.max_shift and cfg.shift_prob:
            k = rng.integers(1, cfg.max_shift + 1, len(idx)) * rng.choice([-1, 1], len(idx))
            shifts = np.where(rng.random(len(idx)) < cfg.shift_prob, k, 0)
        wav = random_crops(train_wavs, idx, crop, rng, shifts)  # [B, crop]
        a = model.audio_embedding(wav)  # [B, D]
        if cfg.caption_aug:
            texts = [augment_caption(train_clips[i], rng, int(s), cfg.original_caption_prob) for i, s in zip(idx, shifts)]
        else:
            texts = [rewrite_caption(train_clips[i].caption, train_clips[i], int(s)) for i, s in zip(idx, shifts)]
        if step < 3:
            log["augmentation"]["examples"] += [{"clip": train_clips[i].caption, "shift": int(s), "caption": x}
                                                for i, s, x in list(zip(idx, shifts, texts))[:4]]
        t = model.text_embedding(caption_vectors(texts) if cfg.caption_aug or shifts.any() else train_text[idx])
        same = torch.tensor([[x == y for y in texts] for x in texts])
        loss = contrastive_loss(a, t, model.scale(), same)
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
    log["steps_per_second"] = step / max(time.perf_counter() - t_train, 1e-9)  # evaluations included
    log["distinct_captions"] = len(text_cache)
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
    defaults = CLAPTrainingConfig()
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
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    p.add_argument("--no-caption-aug", dest="caption_aug", action="store_false", help="train on the corpus captions only")
    p.add_argument("--original-caption-prob", type=float, default=defaults.original_caption_prob)
    p.add_argument("--shift-prob", type=float, default=defaults.shift_prob, help="share of crops pitch/tempo shifted")
    p.add_argument("--max-shift", type=int, default=defaults.max_shift, help="semitones")
    args = p.parse_args(argv)
    command = " ".join(["python -m accelerando.train.clap", *(sys.argv[1:] if argv is None else argv)])
    train(CLAPTrainingConfig(**{k: v for k, v in vars(args).items()}), log_fn=lambda *a: print(*a, flush=True), command=command)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Do the Lite generators make music? Pulse, tempo, key, onsets and CLAP on held-out captions.

Generates the captions of the first N test clips (8 s each) with Stable-Audio-Lite and MusicGen-Lite
A, each with its musical controls (beat, metre and key from the caption) and without them (the same
weights, text only) when the checkpoint has controls, and scores them beside the clips themselves,
noise and shuffled captions (`metrics.generation.score_with_baselines`; 95 % bootstrap intervals).
The goals are issue 30's: pulse at the beat lag >= 0.3, tempo Acc2 >= 0.6, key >= 0.65, onsets per
second within 30 % of the clips', CLAP score >= 0.4.

    python scripts/evaluate_testbeds.py 48                       # the committed checkpoints
    python scripts/evaluate_testbeds.py 48 --dit path/to/dit --musicgen path/to/musicgen_a --out board.csv
"""
import argparse
import logging
import warnings

import numpy as np
import torch

from accelerando.checkpoint import CHECKPOINTS
from accelerando.data import build_corpus, preset
from accelerando.metrics import get_embedding
from accelerando.metrics.generation import board, clip_audio, embed_set, music_goals, score_with_baselines
from accelerando.models.clap_lite import CLAPLite
from accelerando.models.musicgen_lite import MusicGenLitePipeline
from accelerando.models.stable_audio_lite import DIT_CHECKPOINT, generate, load_stable_audio_lite

SECONDS = 8.0

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("n", type=int, nargs="?", default=48, help="test captions")
parser.add_argument("--dit", default=str(DIT_CHECKPOINT))
parser.add_argument("--musicgen", default=str(CHECKPOINTS / "musicgen_lite_a"))
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--guidance", type=float, default=6.0, help="Stable-Audio-Lite's CFG weight (MusicGen-Lite: 3)")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--models", nargs="+", choices=("dit", "musicgen"), default=["dit", "musicgen"])
parser.add_argument("--out", default=None, help="also write the board as CSV")
args = parser.parse_args()

torch.set_num_threads(args.threads)
logging.getLogger("accelerando.metrics").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="Trying to estimate tuning from empty frequency set")
corpus = build_corpus(preset("full", sample_rate=22050))
test = list(corpus.filter(split="test"))[: args.n]
sr = 22050

pipe = load_stable_audio_lite(args.dit) if "dit" in args.models else None
mg = MusicGenLitePipeline.from_pretrained("a", path=args.musicgen) if "musicgen" in args.models else None
clap = CLAPLite.from_pretrained(CHECKPOINTS / "clap_lite")


def stable_audio(controls):
    def run(prompts):
        out = []
        for i in range(0, len(prompts), 8):
            audio, _ = generate(pipe, prompts[i:i + 8], seconds=SECONDS, steps=args.steps,
                                guidance_scale=args.guidance, seed=args.seed + i, controls=controls)
            out += [torch.from_numpy(a) for a in audio]
        return out
    return run


def musicgen(controls):
    def run(prompts):
        out = []
        for i in range(0, len(prompts), 8):
            audio, _ = mg(prompts[i:i + 8], seconds=SECONDS, seed=args.seed + i, controls=controls)
            out += list(audio)
        assert mg.sample_rate == sr
        return out
    return run


generators = {}
if pipe is not None:
    generators["Stable-Audio-Lite"] = stable_audio("caption")
    if getattr(pipe, "control_adapter", None) is not None:
        generators["Stable-Audio-Lite, no controls"] = stable_audio(None)
if mg is not None:
    generators["MusicGen-Lite A"] = musicgen("caption")
    if mg.model.config.control_channels:
        generators["MusicGen-Lite A, no controls"] = musicgen(None)

embedders = {"clap-lite": get_embedding("clap-lite", model=clap)}
reference = embed_set([clip_audio(c, sr, SECONDS) for c in list(corpus.filter(split="val"))[: args.n]], sr, embedders)
per_clip, summary, _ = score_with_baselines(generators, test, sr, SECONDS, reference, embedders, clap=clap.scorer(),
                                         seed=args.seed)
table = board(summary)
with np.printoptions(linewidth=200):
    print(f"{len(test)} test captions, {SECONDS} s; " + "; ".join(
        ([f"Stable-Audio-Lite {args.dit} ({args.steps} steps, guidance {args.guidance})"] if pipe else [])
        + ([f"MusicGen-Lite A {args.musicgen}"] if mg else [])))
    print(table.to_string())
for name in generators:
    print(f"\n{name} against the goals:\n{music_goals(summary, name).to_string()}")
for name, rows in per_clip.items():
    print(f"{name}: pulse defined on {rows.pulse.notna().sum()}, tempo on {rows.tempo_acc2.notna().sum()} clips")
if args.out:
    table.to_csv(args.out)

#!/usr/bin/env python3
"""Pilot: does Stable-Audio-Lite's output tempo move with the tempo its prompt states?

The first N test captions that state "<n> BPM" are generated twice with the same noise (seed 0,
8 s, 50 steps, guidance 6), once with the tempo replaced by 60 BPM and once by 150 BPM. For each
generation: the onset-based tempo estimate of the metrics suite and the onset density (onsets
per second, which has no octave errors). If the prompt's number steered the tempo, both would
rise from 60 to 150 for most captions.

    python scripts/pilot_tempo_sensitivity.py 16      # about 1 minute on 2 threads
"""
import re
import sys

import librosa
import numpy as np
import pandas as pd
import torch

from accelerando.data import build_corpus, preset
from accelerando.metrics.adherence import estimate_tempo
from accelerando.models.stable_audio_lite import generate, load_stable_audio_lite

torch.set_num_threads(2)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
pipe = load_stable_audio_lite()
pipe.set_progress_bar_config(disable=True)
corpus = build_corpus(preset("full", sample_rate=22050))
test = [c for c in corpus.filter(split="test") if re.search(r"\d+ BPM", c.caption)][:n]
rows = []
for bpm in (60, 150):
    prompts = [re.sub(r"\d+ BPM", f"{bpm} BPM", c.caption) for c in test]
    audio, sr = generate(pipe, prompts, seconds=8.0, steps=50, guidance_scale=6.0, seed=0)
    for clip, a in zip(test, audio):
        y = np.asarray(a).reshape(-1)
        onsets = librosa.onset.onset_detect(y=y, sr=sr, units="time")
        rows.append({"clip": clip.id, "bpm": bpm, "tempo": estimate_tempo(torch.from_numpy(np.asarray(a)), sr),
                     "onsets_per_s": len(onsets) / 8.0})
df = pd.DataFrame(rows)
print(df.groupby("bpm")[["tempo", "onsets_per_s"]].agg(["mean", "median"]))
density = df.pivot(index="clip", columns="bpm", values="onsets_per_s")
d = density[150] - density[60]
print(f"onsets/s, 150 minus 60 BPM, paired over {len(d)} captions: mean {d.mean():.2f}, higher in {(d > 0).sum()}/{len(d)}")
tempo = df.pivot(index="clip", columns="bpm", values="tempo").dropna()
print(f"estimated tempo, 150 minus 60 BPM: mean {(tempo[150] - tempo[60]).mean():.1f} BPM over {len(tempo)} captions")

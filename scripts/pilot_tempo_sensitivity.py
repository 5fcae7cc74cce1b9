#!/usr/bin/env python3
"""Pilot: does Stable-Audio-Lite's output tempo move with the tempo its prompt states?

The first N test captions that state a steady tempo ("at <n> BPM") are generated twice with the
same noise (seed 0, 8 s, 50 steps, guidance 6), once with the tempo replaced by 60 BPM and once by
150 BPM. For each generation: the onset-based tempo estimate of the metrics suite, the onset
density (onsets per second, which has no octave errors) and the pulse at each tempo: the
autocorrelation of the onset envelope at the lag of one beat at 60 and at 150 BPM, normalised by
its value at lag 0. If the prompt's number steered the tempo, the density and the estimate would
rise from 60 to 150 for most captions, and each generation's pulse would be stronger at its own
tempo's lag. The test clips' pulse at their own beat lag shows how strong a real beat is.

    python scripts/pilot_tempo_sensitivity.py 16                  # about 1 minute on 2 threads
    python scripts/pilot_tempo_sensitivity.py 16 path/to/dit      # another Stable-Audio-Lite checkpoint
"""
import re
import sys

import librosa
import numpy as np
import pandas as pd
import torch

from accelerando.data import build_corpus, preset
from accelerando.metrics.adherence import estimate_tempo
from accelerando.metrics.analysis import ANALYSIS_SR, analysis_signal
from accelerando.metrics.rhythm import HOP, onset_envelope
from accelerando.models.stable_audio_lite import DIT_CHECKPOINT, generate, load_stable_audio_lite

SECONDS = 8.0


def pulse(y: np.ndarray, sr: int, bpm: float) -> float:
    """Onset-envelope autocorrelation of mono `y` at the lag of one beat at `bpm`, over its value at lag 0."""
    env = onset_envelope(analysis_signal(np.asarray(y, dtype=np.float32)[None], sr, name="pilot"))
    env = env - env.mean()
    ac = librosa.autocorrelate(env)
    return float(ac[int(round(60.0 / bpm * ANALYSIS_SR / HOP))] / max(ac[0], 1e-12))


torch.set_num_threads(2)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
pipe = load_stable_audio_lite(sys.argv[2] if len(sys.argv) > 2 else DIT_CHECKPOINT)
pipe.set_progress_bar_config(disable=True)
corpus = build_corpus(preset("full", sample_rate=22050))
test = [c for c in corpus.filter(split="test") if re.search(r"at \d+ BPM", c.caption)][:n]
rows = []
for bpm in (60, 150):
    prompts = [re.sub(r"at \d+ BPM", f"at {bpm} BPM", c.caption) for c in test]
    audio, sr = generate(pipe, prompts, seconds=SECONDS, steps=50, guidance_scale=6.0, seed=0)
    for clip, a in zip(test, audio):
        y = np.asarray(a).reshape(-1)
        onsets = librosa.onset.onset_detect(y=y, sr=sr, units="time")
        rows.append({"clip": clip.id, "bpm": bpm, "tempo": estimate_tempo(torch.from_numpy(np.asarray(a)), sr),
                     "onsets_per_s": len(onsets) / SECONDS, "pulse_60": pulse(y, sr, 60), "pulse_150": pulse(y, sr, 150)})
df = pd.DataFrame(rows)
print(df.groupby("bpm")[["tempo", "onsets_per_s", "pulse_60", "pulse_150"]].agg(["mean", "median"]).round(3))
density = df.pivot(index="clip", columns="bpm", values="onsets_per_s")
d = density[150] - density[60]
print(f"onsets/s, 150 minus 60 BPM, paired over {len(d)} captions: mean {d.mean():.2f}, higher in {(d > 0).sum()}/{len(d)}")
tempo = df.pivot(index="clip", columns="bpm", values="tempo").dropna()
print(f"estimated tempo, 150 minus 60 BPM: mean {(tempo[150] - tempo[60]).mean():.1f} BPM over {len(tempo)} captions")
other = {60: 150, 150: 60}
own = df.apply(lambda r: r[f"pulse_{r.bpm}"] - r[f"pulse_{other[r.bpm]}"], axis=1)
print(f"pulse at the asked tempo minus at the other: mean {own.mean():+.3f}, positive in {(own > 0).sum()}/{len(own)}")
real = []
for clip in test:
    y = clip.load()
    y = (y.mean(axis=1) if y.ndim == 2 else y)[: int(SECONDS * clip.sample_rate)]
    real.append({"own": pulse(y, clip.sample_rate, clip.tempo_bpm), "off": pulse(y, clip.sample_rate, clip.tempo_bpm * 1.37)})
real = pd.DataFrame(real)
print(f"test clips: pulse at their own beat lag {real.own.mean():.3f} (median {real.own.median():.3f}), "
      f"at 1.37 x that tempo {real.off.mean():.3f}")

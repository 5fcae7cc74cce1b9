"""Beat trackers side by side: the project's `track_beats`, its old rule, librosa and essentia.

    python scripts/compare_beat_trackers.py [n_clips]

Two sets of n_clips (default 40) clips: the held-out set (music21 collections the corpus does not
use, rendered with FluidR3 GM) and corpus clips; mir_eval beat F (±70 ms) and tempo Acc1/Acc2.
Chapter 2 makes the same comparison on its own clips.
"""

import sys

import pandas as pd

from accelerando.data import build_corpus, preset
from accelerando.data.heldout import build_beat_heldout
from accelerando.metrics.adherence import evaluate_beat_tracker
from accelerando.metrics.rhythm import BEAT_TRACKERS

n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
sets = {
    "held-out": build_beat_heldout(n_clips=n),
    "corpus": [{"id": c.id, "audio": c.load(), "sample_rate": c.sample_rate, "beats": c.beats, "tempo_bpm": c.tempo_bpm}
               for c in build_corpus(preset("small", n_clips=n, workers=1))],
}
rows = [{"set": s, "tracker": name, **pd.DataFrame(evaluate_beat_tracker(fn, clips))[["beat_f", "acc1", "acc2"]].mean()}
        for s, clips in sets.items() for name, fn in BEAT_TRACKERS.items()]
print(pd.DataFrame(rows).round(3).to_string(index=False))

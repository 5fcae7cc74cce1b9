"""Music-theory constants shared by the corpus (ground truth) and the metrics (estimates).

Key finding follows Krumhansl (1990, ch. 4): correlate a 12-bin pitch-class profile (a score's
duration-weighted histogram, or audio chroma) with the 24 rotations of the Krumhansl & Kessler
(1982) major and minor probe-tone ratings; the best Pearson correlation names the key. Keeping one
copy here means the corpus labels and the metrics that score against them use the same profiles.
"""

from __future__ import annotations

import numpy as np

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MODES = ("major", "minor")
# mir_eval's spelling of the 12 tonics ("C#", not "Db"); captions may spell keys their own way.
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def key_correlations(profile: np.ndarray) -> np.ndarray:
    """Pearson correlation of a 12-bin pitch-class profile with the 24 Krumhansl-Kessler keys.

    Returns shape (2, 12): row 0 the major keys with tonic C..B, row 1 the minor keys. A flat
    profile (silence, white noise) has no key: all zeros.
    """
    p = np.asarray(profile, dtype=float)
    out = np.zeros((2, 12))
    if p.std() == 0:
        return out
    z = (p - p.mean()) / p.std()
    for mode, ratings in enumerate((KK_MAJOR, KK_MINOR)):
        for tonic in range(12):
            r = np.roll(ratings, tonic)
            out[mode, tonic] = float(z @ ((r - r.mean()) / r.std())) / 12
    return out

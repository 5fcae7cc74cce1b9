"""Metrics suite: how close generated audio is to a reference, as a set, clip by clip, musically.

- `distribution`: FAD (with its n), FAD-inf, KAD over embeddings from `embeddings` (a plug-in
  registry: "mel-stats", "crepe-tiny", "crepe-full" offline; "vggish", "clap", "encodec" from
  local checkpoints only).
- `fidelity`: log-spectral distance, multi-resolution STFT (magnitude and complex), SI-SDR,
  mel distance, for aligned reference/generated pairs.
- `rhythm` (Beat Consistency Score, beat F-measure), `tonal` (Key Stability Index, MIREX key
  score), `transients` (Transient Smearing Ratio), `structure` (boundary hit-rate F at 0.5 s and
  3 s), `text_audio` (CLAP score hook), `codec` (how audio survives a token codec).
  Speed (latency, real-time factor) is measured by `accelerando.bench`.
- `stats`: `Estimate` (value, ci_low, ci_high, n), seeded bootstrap intervals, paired comparisons.

Command line: `python -m accelerando.metrics --ref DIR --gen DIR --json`.
Inputs are [channels, samples] waveforms validated by `accelerando.audio.check_audio`; metrics
downmix to mono unless stereo-aware (the fidelity metrics are). Undefined per-clip values are None
with a logged reason, never NaN.
"""

from .distribution import compare_fad, fad, fad_inf, frechet_distance, kad
from .embeddings import EMBEDDINGS, Embedding, MissingCheckpoint, checkpoint_dir, get_embedding, register_embedding
from .fidelity import FIDELITY_METRICS, complex_mrstft_distance, log_spectral_distance, mel_distance, mrstft_distance, si_sdr
from .rhythm import beat_consistency, beat_f_measure, estimate_beats, local_tempo
from .stats import Estimate, PairedComparison, bootstrap_ci, paired_comparison
from .structure import segment_boundaries, segmentation_f
from .text_audio import clap_score
from .tonal import estimate_key, key_score, key_stability
from .transients import transient_smearing_ratio

__all__ = [
    "EMBEDDINGS", "FIDELITY_METRICS", "Embedding", "Estimate", "MissingCheckpoint", "PairedComparison",
    "beat_consistency", "beat_f_measure", "bootstrap_ci", "checkpoint_dir", "clap_score", "compare_fad",
    "complex_mrstft_distance", "estimate_beats", "estimate_key", "fad", "fad_inf", "frechet_distance",
    "get_embedding", "kad", "key_score", "key_stability", "local_tempo", "log_spectral_distance",
    "mel_distance", "mrstft_distance", "paired_comparison", "register_embedding",
    "segment_boundaries", "segmentation_f", "si_sdr", "transient_smearing_ratio",
]

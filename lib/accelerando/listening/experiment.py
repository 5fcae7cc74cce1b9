"""A listening experiment: what it plays, in which trials, and the stimuli it prepares for them.

An experiment is a YAML file (paths relative to it):

    name: svdquant-w4a4
    title: Full precision against 4-bit generation
    training: waltz                      # the trial played, unrated, to familiarise (optional)
    trials:
      - id: waltz
        type: mushra
        reference: audio/waltz/full.wav
        conditions: {svdquant: audio/waltz/svdquant.wav, rtn: audio/waltz/rtn.wav}
      - id: waltz-abx
        type: abx
        a: audio/waltz/full.wav
        b: audio/waltz/svdquant.wav
      - id: reel-remix
        type: remix                      # which stem of the mix was generated? (double-blind)
        mix: audio/reel/mix.wav
        stems: {fiddle: audio/reel/fiddle.wav, bodhran: audio/reel/bodhran.wav, guitar: audio/reel/guitar.wav}
        generated: guitar

`prepare` writes what a participant hears into a folder: for a MUSHRA trial (ITU-R BS.1534-3)
the open reference, the hidden reference, the 3.5 kHz low-pass anchor, the 7 kHz mid anchor and
the conditions, all loudness-matched to the reference (ITU-R BS.1770 integrated loudness); for
an ABX trial A, B and X (A or B, drawn per participant when the trial is served); for a remix
trial the mix and each stem, the stems matched to the mix. Files are named by an opaque id, so
nothing a participant can see says which condition is which.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy.signal import butter, sosfiltfilt

from ..audio import AudioError, check_audio, load_audio, save_audio

MAX_STIMULI = 12          # BS.1534-3: at most 12 signals rated in one trial (hidden reference and anchors included)
LOW_ANCHOR_HZ = 3500.0    # BS.1534-3 low-pass anchor
MID_ANCHOR_HZ = 7000.0    # BS.1534-3 mid-range anchor
ANCHOR_ORDER = 8          # Butterworth order of the anchors' low-pass, applied forwards and backwards
MIN_SECONDS = 1.0         # shortest stimulus: BS.1770 gating needs 400 ms blocks, and a listener needs more
MAX_SECONDS = 30.0        # BS.1534-3 recommends excerpts of about 10 s, and no longer than 12 s
HIDDEN_REFERENCE = "hidden_reference"
ANCHORS = {"anchor_3.5k": LOW_ANCHOR_HZ, "anchor_7k": MID_ANCHOR_HZ}
TRIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ExperimentError(ValueError):
    """A malformed experiment file or stimulus; the message names the problem and the fix."""


@dataclass(frozen=True)
class Trial:
    id: str
    type: str                              # "mushra", "abx" or "remix"
    sources: dict[str, str]                # condition -> audio path (MUSHRA: "reference" and the conditions;
                                           # ABX: "a", "b"; remix: "mix" and the stems by name)
    generated: str | None = None           # remix: the stem that was generated (never sent to a participant)


@dataclass
class Experiment:
    name: str
    title: str
    trials: list[Trial]
    training: str | None = None
    root: Path = field(default=Path("."), repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        path = Path(path)
        try:
            spec = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ExperimentError(f"{path}: no such experiment file") from None
        except yaml.YAMLError as err:
            raise ExperimentError(f"{path}: not valid YAML ({err})") from None
        return cls.from_dict(spec, root=path.parent)

    @classmethod
    def from_dict(cls, spec: dict, root: str | Path = ".") -> Experiment:
        if not isinstance(spec, dict) or not spec.get("trials"):
            raise ExperimentError("an experiment needs a 'name' and a list of 'trials'")
        unknown = set(spec) - {"name", "title", "training", "trials"}
        if unknown:
            raise ExperimentError(f"unknown key(s) {sorted(unknown)}: an experiment has name, title, training, trials")
        trials = []
        for i, t in enumerate(spec["trials"]):
            tid, kind = str(t.get("id", "")), t.get("type", "mushra")
            if not TRIAL_ID.match(tid):
                raise ExperimentError(f"trial {i}: id {tid!r} must be 1-64 letters, digits, '_', '-' or '.'")
            if kind == "mushra":
                conditions = t.get("conditions") or {}
                if "reference" not in t or not conditions:
                    raise ExperimentError(f"trial {tid}: a MUSHRA trial needs a 'reference' and 'conditions'")
                reserved = {"reference", HIDDEN_REFERENCE, *ANCHORS} & set(conditions)
                if reserved:
                    raise ExperimentError(f"trial {tid}: condition name(s) {sorted(reserved)} are reserved; rename them")
                if len(conditions) + 1 + len(ANCHORS) > MAX_STIMULI:
                    raise ExperimentError(f"trial {tid}: {len(conditions)} conditions + hidden reference + 2 anchors "
                                          f"exceed BS.1534-3's {MAX_STIMULI} stimuli; split the trial")
                sources = {"reference": t["reference"], **conditions}
            elif kind == "abx":
                if "a" not in t or "b" not in t:
                    raise ExperimentError(f"trial {tid}: an ABX trial needs 'a' and 'b'")
                sources = {"a": t["a"], "b": t["b"]}
            elif kind == "remix":
                stems = t.get("stems") or {}
                if "mix" not in t or len(stems) < 2 or t.get("generated") not in stems:
                    raise ExperimentError(f"trial {tid}: a remix trial needs a 'mix', two or more 'stems' and "
                                          f"'generated' naming one of them")
                if "mix" in stems or not all(TRIAL_ID.match(str(name)) for name in stems):
                    raise ExperimentError(f"trial {tid}: stem names are letters, digits, '_', '-' or '.', not 'mix'")
                sources = {"mix": t["mix"], **stems}
            else:
                raise ExperimentError(f"trial {tid}: type {kind!r}; use 'mushra', 'abx' or 'remix'")
            trials.append(Trial(tid, kind, {k: str(v) for k, v in sources.items()}, t.get("generated")))
        ids = [t.id for t in trials]
        if len(set(ids)) != len(ids):
            raise ExperimentError(f"trial ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
        training = spec.get("training")
        if training is not None and training not in ids:
            raise ExperimentError(f"training trial {training!r} is not one of the trials {ids}")
        name = str(spec.get("name", ""))
        if not TRIAL_ID.match(name):
            raise ExperimentError(f"name {name!r} must be 1-64 letters, digits, '_', '-' or '.'")
        return cls(name, str(spec.get("title", name)), trials, training, Path(root))

    def trial(self, trial_id: str) -> Trial:
        for t in self.trials:
            if t.id == trial_id:
                return t
        raise KeyError(trial_id)

    def rated_trials(self) -> list[Trial]:
        """The trials a participant answers (the training trial is played, not rated)."""
        return [t for t in self.trials if t.id != self.training]


def stimulus_id(experiment: str, trial: str, condition: str) -> str:
    """An opaque, stable id of one stimulus: its file name and its name on the page."""
    return hashlib.sha256(f"{experiment}\0{trial}\0{condition}".encode()).hexdigest()[:16]


def lowpass(wav: np.ndarray, sr: int, cutoff_hz: float) -> np.ndarray:
    """[channels, samples] low-passed at `cutoff_hz` with zero phase (a BS.1534-3 anchor)."""
    if cutoff_hz >= sr / 2:
        raise AudioError(f"an anchor at {cutoff_hz:g} Hz needs a sample rate above {2 * cutoff_hz:g} Hz, got {sr}")
    sos = butter(ANCHOR_ORDER, cutoff_hz, btype="low", fs=sr, output="sos")
    return sosfiltfilt(sos, wav, axis=-1).astype(np.float32)


def loudness(wav: np.ndarray, sr: int) -> float:
    """Integrated loudness (LUFS, ITU-R BS.1770-4) of [channels, samples]."""
    import pyloudnorm

    return float(pyloudnorm.Meter(sr).integrated_loudness(wav.T.astype(np.float64)))


def match_loudness(wav: np.ndarray, sr: int, target_lufs: float) -> np.ndarray:
    """`wav` scaled to `target_lufs`; refuses a gain that would clip (the fix: a quieter target)."""
    gain = 10 ** ((target_lufs - loudness(wav, sr)) / 20)
    out = wav * gain
    peak = float(np.abs(out).max())
    if peak >= 1.0:
        raise AudioError(f"loudness matching to {target_lufs:.1f} LUFS would clip (peak {peak:.2f}): "
                         f"lower the reference's level or shorten its loudest passage")
    return out.astype(np.float32)


def read_stimulus(path: Path, name: str) -> tuple[np.ndarray, int]:
    """A stimulus file as [channels, samples] float32 and its rate, checked for what a listening
    test cannot use: unreadable, silent, NaN, too short or too long."""
    try:
        wav, sr = load_audio(path)
    except (OSError, RuntimeError) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioError(f"{name}: {path.name} is not readable audio ({err}); use WAV or FLAC") from None
    wav = check_audio(wav, sr, name=name, min_seconds=MIN_SECONDS).numpy()
    if wav.shape[-1] / sr > MAX_SECONDS:
        raise AudioError(f"{name}: {wav.shape[-1] / sr:.1f} s is longer than {MAX_SECONDS:g} s; cut an excerpt")
    return wav, sr


def prepare(experiment: Experiment, out: str | Path) -> dict:
    """Write every stimulus of `experiment` into `out` as `<stimulus id>.wav` and return the
    manifest {trial: {condition: stimulus id}} (also written as `out/manifest.json`).

    Stimuli are cut to the shortest of their trial and loudness-matched to its first (the MUSHRA
    reference, ABX's A, the remix's mix); MUSHRA trials gain the hidden reference and both anchors."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for trial in experiment.trials:
        audio = {c: read_stimulus(experiment.root / p, f"trial {trial.id}, {c}") for c, p in trial.sources.items()}
        rates = {sr for _, sr in audio.values()}
        channels = {w.shape[0] for w, _ in audio.values()}
        if len(rates) > 1 or len(channels) > 1:
            raise AudioError(f"trial {trial.id}: stimuli differ in sample rate {sorted(rates)} or channels "
                             f"{sorted(channels)}; resample them to one rate and layout first")
        sr = rates.pop()
        n = min(w.shape[-1] for w, _ in audio.values())
        audio = {c: w[:, :n] for c, (w, _) in audio.items()}
        first = {"mushra": "reference", "abx": "a", "remix": "mix"}[trial.type]
        target = loudness(audio[first], sr)
        if trial.type == "mushra":
            audio[HIDDEN_REFERENCE] = audio["reference"]
            for anchor, hz in ANCHORS.items():
                audio[anchor] = lowpass(audio["reference"], sr, hz)
        ids = {}
        for condition, wav in audio.items():
            sid = stimulus_id(experiment.name, trial.id, condition)
            save_audio(out / f"{sid}.wav", match_loudness(wav, sr, target), sr, subtype="FLOAT")
            ids[condition] = sid
        manifest[trial.id] = ids
    (out / "manifest.json").write_text(json.dumps({"experiment": experiment.name, "trials": manifest}, indent=1))
    return manifest


def stimulus_table(experiment: Experiment, manifest: dict, folder: str | Path) -> list[dict]:
    """One row per prepared stimulus (trial, type, condition, seconds, loudness in LUFS), read
    back from the files `prepare` wrote into `folder`."""
    rows = []
    for trial in experiment.trials:
        for condition, sid in manifest[trial.id].items():
            wav, sr = load_audio(Path(folder) / f"{sid}.wav")
            wav = wav.numpy()
            rows.append({"trial": trial.id, "type": trial.type, "condition": condition,
                         "seconds": wav.shape[-1] / sr, "loudness_lufs": loudness(wav, sr)})
    return rows


def describe(experiment: Experiment) -> dict:
    return {"name": experiment.name, "title": experiment.title, "training": experiment.training,
            "trials": [asdict(t) for t in experiment.trials]}

"""Arranging: from an extracted work to clip plans, and from a plan to timed events and truth.

A *plan* is the handful of random choices that make a clip (which bars, tempo, transposition,
ensemble, drum style), drawn from a generator seeded by (corpus seed, work): the same work
gets the same plans in any build order. `realize` turns a plan into everything the manifest
states, in seconds of the clip's own timeline, and the note and drum events the synthesizer
plays: the audio is made from the same events as the ground truth, never separately.

Timeline: the clip starts on a downbeat (t = 0). Tempo is either constant or changes linearly
in time from `bpm_start` to `bpm_end` over the clip, so beat b (counted from the clip start)
falls at the t solving  b = (bpm_start t + (bpm_end - bpm_start) t^2 / (2 T)) / 60.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..music import key_correlations
from .scores import EPS, GENRES

# Ensembles: caption noun and General MIDI programs (0-based) for four roles, high to low
# (soprano, alto, tenor, bass). Voices are mapped onto roles by register.
ENSEMBLE_PROGRAMS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "string_quartet": ("string quartet", (40, 40, 41, 42)),  # violin, violin, viola, cello
    "string_orchestra": ("string orchestra", (48, 48, 48, 43)),  # string ensemble 1, contrabass
    "brass": ("brass ensemble", (56, 60, 57, 58)),  # trumpet, French horn, trombone, tuba
    "woodwinds": ("woodwind quartet", (73, 68, 71, 70)),  # flute, oboe, clarinet, bassoon
    "saxophones": ("saxophone quartet", (64, 65, 66, 67)),  # soprano, alto, tenor, baritone
    "piano": ("piano", (0, 0, 0, 0)),  # acoustic grand
    "organ": ("church organ", (19, 19, 19, 19)),
    "harpsichord": ("harpsichord", (6, 6, 6, 6)),
    "guitars": ("guitar ensemble", (25, 24, 24, 32)),  # steel, nylon, nylon, acoustic bass
    "choir": ("choir", (52, 52, 53, 52)),  # choir aahs, voice oohs
    "mallets": ("mallet ensemble", (11, 12, 12, 32)),  # vibraphone, marimba, acoustic bass
    "synth": ("synthesizer ensemble", (80, 89, 89, 38)),  # square lead, warm pad, synth bass
    "chamber_mix": ("mixed chamber ensemble", (73, 40, 71, 42)),  # flute, violin, clarinet, cello
}

# General MIDI percussion keys (channel 10) the drum styles use.
KICK, SIDE_STICK, SNARE, CLOSED_HAT, PEDAL_HAT, CRASH, RIDE = 36, 37, 38, 42, 44, 49, 51
DRUM_STYLES = ("rock", "light", "march")

MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
MIN_COVERAGE = 0.75  # share of the clip some note must sound in (no clip of mostly rests)


@dataclass(frozen=True)
class ClipPlan:
    """The random choices of one clip. Units: ql (quarter lengths), BPM, semitones."""

    work_id: str
    index: int  # k-th clip of this work
    start_measure: int  # row of work["measures"] the clip starts at (a downbeat)
    start_ql: float
    end_ql: float  # score position at the clip's end
    bpm_start: float
    bpm_end: float
    transpose: int
    ensemble: str
    drums: str | None  # one of DRUM_STYLES, or None
    double_octave: bool  # a melody doubled an octave lower by the ensemble's bass
    seed: int  # for velocities


def plan_clips(work: dict, config, rng: np.random.Generator) -> list[ClipPlan]:
    """Up to `config.clips_per_work` non-overlapping excerpts of `work`, with their choices."""
    measures = work["measures"]
    lo, hi = config.tempo_bpm or GENRES[work["genre"]].tempo
    starts = [i for i, m in enumerate(measures) if abs(m[1] - m[3]) < EPS and abs(m[2] - m[0]) < EPS]
    order = rng.permutation(len(starts))
    onsets, intervals = _note_spans(work)
    plans: list[ClipPlan] = []
    taken: list[tuple[float, float]] = []
    for j in order[: 4 * config.clips_per_work + 8]:  # a bounded number of tries per work
        if len(plans) == config.clips_per_work:
            break
        i = starts[j]
        bpm0 = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        bpm1 = bpm0
        if rng.random() < config.tempo_ramp_prob:
            bpm1 = bpm0 * (1 + rng.choice([-1, 1]) * rng.uniform(0.3, 1.0) * config.tempo_ramp_max)
        beats = config.seconds * (bpm0 + bpm1) / 120  # beats in the clip
        start = measures[i][0]
        end = start + beats * measures[i][4]
        if not _regular_bars_until(measures, i, end):
            continue
        if any(start < b and a < end for a, b in taken):
            continue
        if (
            _coverage(intervals, start, end) < MIN_COVERAGE
            or np.count_nonzero((onsets >= start) & (onsets < end)) < 6
        ):
            continue
        taken.append((start, end))
        plans.append(
            ClipPlan(
                work_id=work["work_id"],
                index=len(plans),
                start_measure=i,
                start_ql=start,
                end_ql=end,
                bpm_start=round(float(bpm0), 3),
                bpm_end=round(float(bpm1), 3),
                transpose=int(rng.integers(-config.transpose, config.transpose + 1)),
                ensemble=str(rng.choice(list(config.ensembles))),
                drums=str(rng.choice(DRUM_STYLES)) if rng.random() < config.drums_prob else None,
                double_octave=bool(rng.random() < 0.5),
                seed=int(rng.integers(2**31)),
            )
        )
    return plans


def _note_spans(work: dict) -> tuple[np.ndarray, np.ndarray]:
    notes = np.array([n[:2] for p in work["parts"] for n in p["notes"]], dtype=float)
    return notes[:, 0], np.stack([notes[:, 0], notes[:, 0] + notes[:, 1]], axis=1)


def _regular_bars_until(measures: list, i: int, end: float) -> bool:
    """Whether every bar from row i up to score position `end` is whole and in row i's metre.

    Scores hold a few irregular bars (a repeat splitting a bar in an unexpanded ABC tune, an
    overfull bar in a quartet): an excerpt crossing one would have an uneven beat grid.
    """
    for m in measures[i:]:
        if m[0] >= end - EPS:
            return True
        if m[6] != measures[i][6] or abs(m[1] - m[3]) > EPS or abs(m[2] - m[0]) > EPS:
            return False
    return measures[-1][0] + measures[-1][1] >= end - EPS  # the score must not end early


def _coverage(intervals: np.ndarray, start: float, end: float) -> float:
    """Share of [start, end) covered by at least one note."""
    grid = np.linspace(start, end, 200, endpoint=False)
    on = ((intervals[:, :1] <= grid) & (grid < intervals[:, 1:])).any(axis=0)
    return float(on.mean())


class TempoMap:
    """Beats (from the clip start) to seconds under a tempo linear in time over `seconds`."""

    def __init__(self, bpm_start: float, bpm_end: float, seconds: float):
        self.b0, self.b1, self.T = bpm_start, bpm_end, seconds

    def bpm_at(self, t: float) -> float:
        return self.b0 + (self.b1 - self.b0) * t / self.T

    def time(self, beat: float) -> float:
        if beat == 0:
            return 0.0  # exactly, not -0.0 from the root formula
        if abs(self.b1 - self.b0) < 1e-9:
            return 60.0 * beat / self.b0
        a, c = (self.b1 - self.b0) / (120.0 * self.T), self.b0 / 60.0  # b = a t^2 + c t
        disc = max(c * c + 4 * a * beat, 0.0)  # a slowing ramp never reaches 0 BPM in the clip
        return (-c + math.sqrt(disc)) / (2 * a)


def realize(work: dict, plan: ClipPlan, seconds: float, rng_jitter: bool = True) -> dict:
    """Everything the manifest states about a clip, plus the events to synthesize.

    Returns a dict with seconds-based `notes` [[onset, offset, pitch, instrument]],
    `drum_hits` [[time, GM key]], `beats`, `downbeats`, `tempo_curve` [[time, BPM]], `sections`,
    `key`, `instruments` and `events` (per instrument: program, is_drum, pan and volume as
    MIDI controller values 0..127, notes with velocities) for the renderer.
    """
    rng = np.random.default_rng(plan.seed)
    measures = work["measures"]
    row = measures[plan.start_measure]
    beat_ql, metre = row[4], row[6]
    tmap = TempoMap(plan.bpm_start, plan.bpm_end, seconds)
    to_t = lambda ql: tmap.time((ql - plan.start_ql) / beat_ql)  # noqa: E731 (score -> seconds)

    # Bar grid -> beats and downbeats (seconds) inside the clip.
    beats, downbeats, beat_pos = [], [], []
    for m in measures[plan.start_measure :]:
        if m[0] >= plan.end_ql - EPS:
            break
        for k in range(m[5]):
            q = m[2] + k * beat_ql
            if m[0] - EPS <= q < m[0] + m[1] - EPS and plan.start_ql - EPS <= q < plan.end_ql - EPS:
                t = to_t(q)
                if t < seconds - 1e-6:
                    beats.append(t)
                    beat_pos.append((q, k, m[5]))
                    if k == 0:
                        downbeats.append(t)

    # Voices present in the excerpt, high to low by median pitch, onto the ensemble's roles.
    voices = []
    for part in work["parts"]:
        sel = [n for n in part["notes"] if plan.start_ql - EPS <= n[0] < plan.end_ql - EPS]
        if sel:
            voices.append((float(np.median([n[2] for n in sel])), part["name"], sel))
    voices.sort(key=lambda v: -v[0])
    noun, roles = ENSEMBLE_PROGRAMS[plan.ensemble]
    n = len(voices)
    instruments, events, notes, hist = [], [], [], np.zeros(12)
    layers = [(v, 0) for v in voices]
    if n == 1 and plan.double_octave:
        layers.append((voices[0], -12))  # the melody again, an octave lower, on the bass role
    for idx, ((_, name, sel), shift) in enumerate(layers):
        role = 3 if shift else (0 if n == 1 else round(idx * 3 / (n - 1)))
        program = roles[role]
        pan = 64 if len(layers) == 1 else int(round(64 + 40 * (idx / (len(layers) - 1) - 0.5) * 2))
        inst_notes = []
        for onset_ql, dur_ql, pitch in sel:
            on, off = to_t(onset_ql), min(to_t(min(onset_ql + dur_ql, plan.end_ql + 4 * beat_ql)), seconds)
            if on > seconds - 0.03 or off - on < 0.01:
                continue  # too late or too short to sound in the clip
            p = pitch + plan.transpose + shift
            while p > 108:
                p -= 12  # keep inside the piano range the soundfont samples cover
            while p < 21:
                p += 12
            accent = _accent(onset_ql, beat_pos)
            vel = (88 if idx == 0 else 74) + accent + (int(rng.integers(-4, 5)) if rng_jitter else 0)
            inst_notes.append([round(on, 6), round(off, 6), int(p), int(min(max(vel, 30), 120))])
            notes.append([round(on, 6), round(off, 6), int(p), idx])
            if not shift:
                hist[(pitch + plan.transpose) % 12] += off - on  # what sounds in the clip, in seconds
        instruments.append(_instrument(idx, program, False, name if not shift else f"{name} (octave below)"))
        events.append({"program": program, "is_drum": False, "pan": pan, "volume": 100, "notes": inst_notes})

    drum_hits = []
    if plan.drums:
        drum_hits = _drum_part(plan.drums, beat_pos, beat_ql, to_t, seconds)
        instruments.append(_instrument(len(instruments), 0, True, f"drums ({plan.drums})"))
        # Drums at MIDI volume 64 (~8 dB under the pitched parts' 100): at 100 they masked the
        # harmony (chroma-score correlation 0.87, worst 0.55 on 30 clips); at 64 it is 0.94
        # (worst 0.82) while onsets still peak on the beats (7.6x the mean onset strength).
        hits = [[t, round(t + 0.1, 6), k, v] for t, k, v in drum_hits]
        events.append({"program": 0, "is_drum": True, "pan": 64, "volume": 64, "notes": hits})

    key = _ground_truth_key(work, plan, hist)
    sections = [
        [round(to_t(q), 6), kind]
        for q, kind in work["sections"]
        if plan.start_ql + EPS < q < plan.end_ql - EPS
    ]
    curve = (
        [[round(t, 6), round(tmap.bpm_at(t), 3)] for t in beats]
        if plan.bpm_start != plan.bpm_end
        else [[0.0, plan.bpm_start]]
    )
    truth = {
        "time_signature": metre,
        "beat_ql": beat_ql,  # the beat in quarter notes (1.5 = dotted quarter)
        "tempo_bpm": round((plan.bpm_start + plan.bpm_end) / 2, 3),
        "tempo_start_bpm": plan.bpm_start,
        "tempo_end_bpm": plan.bpm_end,
        "tempo_curve": curve,
        "beats": [round(t, 6) for t in beats],
        "downbeats": [round(t, 6) for t in downbeats],
        "key": key,
        "transpose_semitones": plan.transpose,
        "n_voices": n,
        "ensemble": plan.ensemble,
        "instruments": instruments,
        "notes": sorted(notes),
        "drum_hits": [[t, k] for t, k, _ in drum_hits],
        "drums": plan.drums,
        "sections": sections,
        "excerpt": {
            "start_ql": plan.start_ql,
            "end_ql": round(plan.end_ql, 6),
            "start_measure": plan.start_measure,
        },
    }
    truth["caption"] = caption(work["genre"], truth, noun, rng)
    truth["events"] = events
    return truth


def _accent(onset_ql: float, beat_pos: list) -> int:
    """Louder on downbeats (+8) and beats (+4): a player's metric accent."""
    for q, k, _ in beat_pos:
        if abs(q - onset_ql) < EPS:
            return 8 if k == 0 else 4
    return 0


def _instrument(idx: int, program: int, is_drum: bool, part: str) -> dict:
    import pretty_midi

    if is_drum:
        return {
            "index": idx,
            "program": 0,
            "is_drum": True,
            "name": "Standard Drum Kit",
            "family": "Drums",
            "part": part,
        }
    return {
        "index": idx,
        "program": program,
        "is_drum": False,
        "name": pretty_midi.program_to_instrument_name(program),
        "family": pretty_midi.program_to_instrument_class(program),
        "part": part,
    }


def _drum_part(style: str, beat_pos: list, beat_ql: float, to_t, seconds: float) -> list[list]:
    """Drum hits [time s, GM key, velocity] on the clip's beat grid, following the metre.

    The beat splits in 3 in compound metres (dotted beats: 6/8, 9/8, 12/8), else in 2.
    rock: kick on beat 1 (and 3 of 4), snare on the other even beats, hi-hat on every
    subdivision; light: kick on 1, side stick on the other beats, ride on the beat;
    march: kick on every beat, snare on the off-beats, pedal hi-hat on the beat.
    """
    sub = 3 if abs(beat_ql - 1.5 * round(beat_ql / 1.5)) < EPS and beat_ql >= 1.5 else 2
    hits = []
    for q, k, count in beat_pos:
        down, t = k == 0, to_t(q)
        if style == "rock":
            if down or (count == 4 and k == 2):
                hits.append([t, KICK, 110 if down else 96])
            elif k % 2 == 1 or (count == 3 and k == 2):
                hits.append([t, SNARE, 100])
            hits += [[to_t(q + j * beat_ql / sub), CLOSED_HAT, 80 if j == 0 else 62] for j in range(sub)]
        elif style == "light":
            hits.append([t, KICK, 96] if down else [t, SIDE_STICK, 80])
            hits.append([t, RIDE, 72])
        else:  # march
            hits.append([t, KICK, 104 if down else 88])
            hits.append([t, PEDAL_HAT, 70])
            hits += [[to_t(q + j * beat_ql / sub), SNARE, 76] for j in range(1, sub)]
    if beat_pos and beat_pos[0][1] == 0:
        hits.append([to_t(beat_pos[0][0]), CRASH, 100])  # the clip opens on a downbeat
    return sorted([round(t, 6), key, vel] for t, key, vel in hits if t < seconds - 0.02)


def key_name(tonic: int, mode: str) -> str:
    return f"{(MAJOR_NAMES if mode == 'major' else MINOR_NAMES)[tonic % 12]} {mode}"


def _ground_truth_key(work: dict, plan: ClipPlan, hist: np.ndarray) -> dict:
    """The excerpt's key: the score's key signature proposes, the excerpt's notes decide.

    Candidates: the major key and relative minor of the notated signature (s sharps, or
    flats if s < 0), plus those of the neighbouring signatures (s - 1, s + 1): a 10 s excerpt
    may sit in the dominant or subdominant, and the church modes' Mixolydian and Dorian
    finals are among these neighbours. Each candidate is scored by the Krumhansl-Kessler
    correlation with the seconds each pitch class sounds in the clip (after transposition);
    the notated pair gets +0.1 and a declared major/minor mode a further +0.05, so the
    notated key wins unless the excerpt clearly leaves it. Without a signature all 24 keys
    compete. `source` says which case decided: "signature", "neighbour" or "profile".
    """
    corr = key_correlations(hist)
    declared = [k for k in work["keys"] if k[0] <= plan.start_ql + EPS] or work["keys"][:1]
    if declared:
        _, sharps, mode, _ = declared[-1]
        scores = {}
        for step, bonus in ((0, 0.1), (-1, 0.0), (1, 0.0)):
            major = (7 * (sharps + step) + plan.transpose) % 12
            for tonic, m in ((major, "major"), ((major + 9) % 12, "minor")):
                extra = 0.05 if step == 0 and mode == m else 0.0
                scores[(tonic, m, "signature" if step == 0 else "neighbour")] = (
                    corr[int(m == "minor"), tonic] + bonus + extra
                )
        tonic, best_mode, source = max(scores, key=scores.get)
    else:
        m, tonic = np.unravel_index(np.argmax(corr), corr.shape)
        tonic, best_mode, source = int(tonic), ("major", "minor")[m], "profile"
    m, free = np.unravel_index(np.argmax(corr), corr.shape)
    return {
        "tonic": MAJOR_NAMES[tonic] if best_mode == "major" else MINOR_NAMES[tonic],
        "pitch_class": int(tonic),
        "mode": best_mode,
        "name": key_name(tonic, best_mode),
        "source": source,
        "correlation": round(float(corr[int(best_mode == "minor"), tonic]), 4),
        "profile_estimate": key_name(int(free), ("major", "minor")[m]),  # unconstrained best of 24
    }


def caption(genre: str, truth: dict, noun: str, rng: np.random.Generator) -> str:
    """A one-sentence description made only from the ground truth ("a four-part chorale in
    G major for string quartet at 92 BPM, in 4/4, with drums")."""
    g = GENRES[genre]
    n = truth["n_voices"]
    voices = {1: "", 2: "two-part ", 3: "three-part ", 4: "four-part ", 5: "five-part ", 6: "six-part "}.get(
        n, f"{n}-part "
    )
    piece = f"{voices}{g.label}" if g.polyphonic else f"{g.label} melody"
    pitched = [i for i in truth["instruments"] if not i["is_drum"]]
    names = list(dict.fromkeys(i["name"].lower() for i in pitched))
    who = noun if len(pitched) >= 3 else " and ".join(names)
    bpm = round(truth["tempo_bpm"])
    tempo = f"at {bpm} BPM"
    if truth["tempo_start_bpm"] != truth["tempo_end_bpm"]:
        way = "speeding up" if truth["tempo_end_bpm"] > truth["tempo_start_bpm"] else "slowing down"
        tempo = f"{way} from {round(truth['tempo_start_bpm'])} to {round(truth['tempo_end_bpm'])} BPM"
    drums = {
        None: "",
        "rock": ", with a rock drum beat",
        "light": ", with light drums",
        "march": ", with marching drums",
    }[truth["drums"]]
    article = "an" if piece[0] in "aeiouAEIOU" else "a"
    key = truth["key"]["name"]
    templates = (
        f"{article} {piece} in {key} for {who} {tempo}, in {truth['time_signature']}{drums}",
        f"{who} playing {article} {piece} in {key}, {truth['time_signature']} time, {tempo}{drums}",
        f"{key} {piece} arranged for {who}, {tempo} in {truth['time_signature']}{drums}",
    )
    text = templates[int(rng.integers(len(templates)))]
    return text[0].upper() + text[1:]


def plan_to_dict(plan: ClipPlan) -> dict:
    return asdict(plan)

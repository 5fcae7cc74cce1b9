"""A held-out beat-tracking set: music the corpus never uses, played by another soundfont.

The corpus's own clips share their collections and their soundfont with everything the project
is tuned on, so a beat tracker that fits them may only fit TimGM6mb's attacks. This set takes
up to two 10 s excerpts from each work, `n_clips` in all, of of music21 collections no genre in
`scores.GENRES` reads (Corelli, Handel, C.P.E. Bach, Josquin, Joplin, Schumann, ...), arranges
it as the corpus does (ensemble, drums, tempo, ramps; tempi down to 45 BPM), and renders it
with Debian's FluidR3_GM soundfont (`apt-get install fluid-soundfont-gm`).

    from accelerando.data.heldout import build_beat_heldout
    clips = build_beat_heldout()      # list of dicts: audio [samples], beats [s], tempo_bpm, ...

Deterministic for a seed and cached under the data root, keyed like the corpus (config,
renderer and parser versions, soundfont hash, DATA_VERSION).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import CorpusConfig, cache_key, default_root
from .scores import _SCORE_EXTS, GENRES, _abc_numbers, SkipWork, WorkRef, corpus_dir, read_score

log = logging.getLogger(__name__)

FLUID_GM = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian package fluid-soundfont-gm
# music21 collections with a metre that no corpus genre reads (see scores.GENRES)
HELDOUT_DIRS = ("beach", "chopin", "corelli", "cpebach", "handel", "johnson_j_r", "joplin", "josquin", "leadSheet",
                "liliuokalani", "luca", "lusitano", "schoenberg", "schubert", "schumann_clara", "schumann_robert",
                "verdi", "weber", "webern")
HELDOUT_TEMPO = (45.0, 150.0)  # BPM of the score's beat: wider and slower than the corpus genres
MAX_PARTS = 8  # skip orchestral scores: slow to parse, and one tracker pass is all they give


def heldout_config(n_clips: int = 40, seed: int = 0, soundfont: str = FLUID_GM) -> CorpusConfig:
    """The arrangement and rendering settings of the held-out set (10 s, 22.05 kHz mono)."""
    return CorpusConfig(n_clips=n_clips, seconds=10.0, sample_rate=22050, seed=seed, clips_per_work=2,
                        tempo_bpm=HELDOUT_TEMPO, soundfont=soundfont, workers=1)


def heldout_works(seed: int = 0) -> list[WorkRef]:
    """Every score file of HELDOUT_DIRS, in a seeded order (the first tune of an ABC file)."""
    used = {d for g in GENRES.values() for d in g.dirs}
    assert not used & set(HELDOUT_DIRS), "a held-out collection is read by the corpus"
    base = corpus_dir()
    files = sorted(str(p.relative_to(base)) for d in HELDOUT_DIRS if (base / d).is_dir()
                   for p in (base / d).rglob("*") if p.suffix in _SCORE_EXTS)
    order = np.random.default_rng([seed, zlib.crc32(b"heldout")]).permutation(len(files))
    return [WorkRef(files[i], files[i], _abc_numbers(base / files[i])[0] if files[i].endswith(".abc") else None,
                    "heldout", files[i]) for i in order]


def build_beat_heldout(n_clips: int = 40, seed: int = 0, soundfont: str = FLUID_GM,
                       root: str | Path | None = None) -> list[dict]:
    """The held-out clips: dicts with `id`, `work_id`, `audio` (float32 [samples] at
    `sample_rate`), `beats` and `downbeats` (s), `tempo_bpm` (median of the tempo curve),
    `ensemble`, `drums` and `time_signature`. Built once, then read from
    `<root>/heldout-beats-<key>/` (root: `default_root()`)."""
    import soundfile as sf

    from .arrange import plan_clips, realize
    from .corpus import provenance
    from .render import RenderError, render_events

    if not Path(soundfont).is_file():
        raise FileNotFoundError(f"soundfont {soundfont} not found: apt-get install fluid-soundfont-gm "
                                "(the held-out set is rendered with another soundfont than the corpus)")
    config = heldout_config(n_clips, seed, soundfont)
    key = cache_key(config, {**provenance(config), "set": "heldout-beats", "dirs": HELDOUT_DIRS})
    folder = Path(root or default_root()) / f"heldout-beats-{key}"
    if (folder / "clips.json").is_file():
        meta = json.loads((folder / "clips.json").read_text())
        return [{**m, "audio": sf.read(folder / f"{m['id']}.flac", dtype="float32")[0]} for m in meta]

    from music21 import converter, stream

    clips: list[dict] = []
    for ref in heldout_works(seed):
        if len(clips) == n_clips:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = {"number": ref.number} if ref.number is not None else {}
                score = converter.parse(corpus_dir() / ref.path, forceSource=True, **kwargs)
            if isinstance(score, stream.Opus) or len(score.parts) > MAX_PARTS:
                continue
            work = read_score(score, ref)
        except (SkipWork, Exception) as e:  # music21 raises many types on malformed files
            log.debug("held-out work %s skipped: %s", ref.work_id, e)
            continue
        # the genre only picks caption words, which this set does not keep
        work["genre"] = "string_quartet" if len(work["parts"]) > 1 else "folk_song"
        rng = np.random.default_rng([seed, zlib.crc32(ref.work_id.encode())])
        plans = plan_clips(work, replace(config, genres={work["genre"]: 1.0}), rng)
        if not plans:
            continue
        for plan in plans[: n_clips - len(clips)]:
            truth = realize(work, plan, config.seconds)
            try:
                audio = render_events(truth.pop("events"), config.seconds, config.sample_rate, 1, soundfont)
            except RenderError as e:
                log.debug("held-out work %s not rendered: %s", ref.work_id, e)
                continue
            bpm = [b for _, b in truth["tempo_curve"]]
            clips.append({"id": f"heldout-{len(clips):03d}", "work_id": ref.work_id, "audio": audio,
                          "sample_rate": config.sample_rate, "beats": truth["beats"], "downbeats": truth["downbeats"],
                          "tempo_bpm": float(np.median(bpm)), "ensemble": plan.ensemble, "drums": plan.drums,
                          "time_signature": work["measures"][plan.start_measure][6]})
    partial = folder.with_name(folder.name + f".{os.getpid()}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    for c in clips:
        sf.write(partial / f"{c['id']}.flac", c["audio"], config.sample_rate, subtype="PCM_24")
    (partial / "clips.json").write_text(json.dumps([{k: v for k, v in c.items() if k != "audio"} for c in clips]))
    os.replace(partial, folder)  # the folder appears only when complete
    return clips

"""Building the corpus and reading it back.

`build_corpus(config, root)` does, in order:
1. Split: every work's *group* (see `scores`) goes to train/val/test by a hash of its id,
   the same for every seed and config, so no piece is ever in two splits and a small corpus's
   test works are also test works of the full one.
2. Select: per split, candidate works are taken genre by genre, always from the genre furthest
   below its weighted share of clips; each is parsed (cached) and planned in a pool of
   `config.workers` processes, in rounds, until every split has its quota of clips.
3. Render: each planned clip is realised (events + ground truth) and synthesized in the pool;
   a clip that renders silent or NaN is dropped and logged, and selection runs again for it.
4. Write: audio/<id>.flac|wav, manifest.jsonl (one line per clip: all ground truth and the
   audio path), config.json and summary.json, into `<root>/music-<cache key>`, atomically.

Every random draw comes from generators seeded by (config.seed, work): results are identical
whatever the number of workers or the order they finish in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import CorpusConfig, cache_key, config_from_dict, config_to_dict, default_root
from .scores import GENRES, SkipWork, WorkRef, extract_work, list_works

log = logging.getLogger("accelerando.data")

SPLITS = ("train", "val", "test")
_SPLIT_SALT = "accelerando-split-v1"  # changing it would reshuffle every split: don't


def split_of(group_id: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a group: a uniform number from a hash of its id against the fractions."""
    u = int(hashlib.sha256(f"{_SPLIT_SALT}:{group_id}".encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def provenance(config: CorpusConfig) -> dict:
    """Versions of everything that shapes the output: part of the cache key."""
    import midirenderer
    import music21
    import pretty_midi  # noqa: F401 (its soundfont is hashed below)
    import scipy
    import soundfile

    from .render import soundfont_path

    sf2 = soundfont_path(config.soundfont)
    return {
        "music21": music21.__version__,
        "midirenderer": getattr(midirenderer, "__version__", "?"),
        "scipy": scipy.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "soundfont": sf2.name,
        "soundfont_sha256": _file_sha(str(sf2)),
    }


def _file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _quotas(config: CorpusConfig) -> dict[str, int]:
    val = int(round(config.n_clips * config.val_fraction))
    test = int(round(config.n_clips * config.test_fraction))
    return {"train": config.n_clips - val - test, "val": val, "test": test}


def _work_rng(config: CorpusConfig, work_id: str) -> np.random.Generator:
    return np.random.default_rng([config.seed, zlib.crc32(work_id.encode())])


# ---- worker tasks (module level: the pool pickles them by name) -----------------------------


def _plan_task(args: tuple) -> tuple[str, list | str]:
    """Parse (or read the cached extraction of) one work and plan its clips."""
    from .arrange import plan_clips

    ref, config, scores_dir = args
    try:
        work = extract_work(ref, scores_dir)
    except SkipWork as e:
        return ref.work_id, str(e)
    plans = plan_clips(work, config, _work_rng(config, ref.work_id))
    return (
        ref.work_id,
        plans if plans else f"no excerpt of {config.seconds} s fits (too short, metre changes or rests)",
    )


def _render_task(args: tuple) -> list[dict]:
    """Realise and synthesize the clips planned for one work; write their audio."""
    import soundfile as sf

    from .arrange import plan_to_dict, realize
    from .render import RenderError, render_events

    ref, plans, ids, split, config, scores_dir, out_dir = args
    work = extract_work(ref, scores_dir)
    out = []
    for plan, clip_id in zip(plans, ids):
        truth = realize(work, plan, config.seconds)
        events = truth.pop("events")
        try:
            audio = render_events(
                events, config.seconds, config.sample_rate, config.channels, config.soundfont
            )
        except RenderError as e:
            out.append({"id": clip_id, "work_id": ref.work_id, "failed": str(e)})
            continue
        rel = f"audio/{clip_id}.{config.audio_format}"
        subtype = "PCM_24" if config.audio_format == "flac" else "FLOAT"
        sf.write(
            Path(out_dir) / rel,
            audio,
            config.sample_rate,
            subtype=subtype,
            format=config.audio_format.upper(),
        )
        out.append(
            {
                "id": clip_id,
                "audio": rel,
                "split": split,
                "genre": ref.genre,
                "source": GENRES[ref.genre].source,
                "work_id": ref.work_id,
                "group_id": ref.group_id,
                "title": work["title"],
                "composer": work["composer"],
                "seconds": config.seconds,
                "sample_rate": config.sample_rate,
                "channels": config.channels,
                **truth,
                "plan": plan_to_dict(plan),
            }
        )
    return out


# ---- the build -----------------------------------------------------------------------------


def build_corpus(
    config: CorpusConfig | None = None, root: str | Path | None = None, force: bool = False
) -> "Corpus":
    """Build (or load from cache) the corpus `config` describes, under `root` (default:
    `default_root()`, i.e. $ACCELERANDO_DATA or data/ at the repo root). Returns the Corpus."""
    config = config or CorpusConfig()
    root = Path(root) if root is not None else default_root()
    prov = provenance(config)
    key = cache_key(config, prov)
    final = root / f"music-{key}"
    if (final / "manifest.jsonl").is_file() and not force:
        return Corpus(final)
    t0 = time.perf_counter()
    work_dir = root / f"music-{key}.partial"
    shutil.rmtree(work_dir, ignore_errors=True)
    (work_dir / "audio").mkdir(parents=True)
    scores_dir = root / "scores"  # parsed works, shared by every config

    streams, capacity = _candidate_streams(config)
    quotas = _quotas(config)
    for s in SPLITS:
        if quotas[s] > capacity[s]:
            raise ValueError(
                f"n_clips={config.n_clips} asks {quotas[s]} {s} clips but the {s} works of genres "
                f"{sorted(streams[s])} give at most {capacity[s]} (works x clips_per_work={config.clips_per_work}): "
                "lower n_clips, raise clips_per_work or add genres"
            )

    ctx = multiprocessing.get_context("spawn")  # no fork: safe beside threads (torch, BLAS)
    pool = ctx.Pool(config.workers) if config.workers > 1 else None
    mapper = pool.imap if pool is not None else map
    entries: dict[str, list[dict]] = {s: [] for s in SPLITS}
    skipped, failed = [], []
    cursor = {s: {g: 0 for g in streams[s]} for s in SPLITS}
    next_id = 0
    try:
        while True:
            deficit = {s: quotas[s] - len(entries[s]) for s in SPLITS}
            if not any(d > 0 for d in deficit.values()):
                break
            accepted = _select(config, streams, cursor, deficit, entries, skipped, scores_dir, mapper)
            log.info(
                "planned %d clips from %d works (%d skipped so far); rendering",
                sum(len(p) for *_, p in accepted),
                len(accepted),
                len(skipped),
            )
            if not accepted:
                short = {s: d for s, d in deficit.items() if d > 0}
                raise ValueError(
                    f"the scores ran out: {short} clips still missing after every work of genres "
                    f"{sorted(config.genres)} was tried ({len(skipped)} skipped): lower n_clips, "
                    "raise clips_per_work, shorten seconds or add genres"
                )
            tasks = []
            for split, ref, plans in accepted:
                ids = [f"{next_id + i:05d}" for i in range(len(plans))]
                next_id += len(plans)
                tasks.append((ref, plans, ids, split, config, scores_dir, str(work_dir)))
            for result in mapper(_render_task, tasks):
                for e in result:
                    if "failed" in e:
                        failed.append(e)
                        log.warning("clip %s of %s dropped: %s", e["id"], e["work_id"], e["failed"])
                    else:
                        entries[e["split"]].append(e)
            log.info(
                "%d of %d clips rendered (%.0f s)",
                sum(map(len, entries.values())),
                config.n_clips,
                time.perf_counter() - t0,
            )
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    manifest = [e for s in SPLITS for e in entries[s]]
    with open(work_dir / "manifest.jsonl", "w") as f:
        for e in manifest:
            f.write(json.dumps(e, sort_keys=True) + "\n")
    (work_dir / "config.json").write_text(
        json.dumps({"key": key, "config": config_to_dict(config), "provenance": prov}, indent=1)
    )
    summary = _summary(manifest, skipped, failed, time.perf_counter() - t0, key)
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work_dir, final)  # the folder appears only when complete
    return Corpus(final)


def _candidate_streams(config: CorpusConfig) -> tuple[dict, dict]:
    """Per split and genre, the works in a seeded order; and each split's clip capacity."""
    streams: dict[str, dict[str, list[WorkRef]]] = {s: {} for s in SPLITS}
    capacity = Counter()
    for g, w in sorted(config.genres.items()):
        if w <= 0:
            continue
        refs = list_works(g)
        order = np.random.default_rng([config.seed, zlib.crc32(g.encode())]).permutation(len(refs))
        for i in order:
            s = split_of(refs[i].group_id, config.val_fraction, config.test_fraction)
            streams[s].setdefault(g, []).append(refs[i])
            capacity[s] += config.clips_per_work
    return streams, capacity


def _select(config, streams, cursor, deficit, entries, skipped, scores_dir, mapper) -> list[tuple]:
    """One round of selection: pick candidates for each split's deficit, parse and plan them
    in the pool, accept plans in candidate order up to the deficit. Deterministic."""
    weights = {g: w for g, w in config.genres.items() if w > 0}
    have = {s: Counter(e["genre"] for e in entries[s]) for s in SPLITS}
    batch = []
    for s in SPLITS:
        pending, est = Counter(), 0.0
        while est < deficit[s]:
            open_genres = [g for g in sorted(streams[s]) if cursor[s][g] < len(streams[s][g])]
            if not open_genres:
                break
            g = min(open_genres, key=lambda g: ((have[s][g] + pending[g]) / weights[g], g))
            batch.append((s, streams[s][g][cursor[s][g]]))
            cursor[s][g] += 1
            # expected yield: half of clips_per_work, so short works do not stall the rounds
            pending[g] += max(1.0, config.clips_per_work / 2)
            est += max(1.0, config.clips_per_work / 2)
    accepted, left = [], dict(deficit)
    results = mapper(_plan_task, [(ref, config, scores_dir) for _, ref in batch])
    for (s, ref), (work_id, res) in zip(batch, results):
        if isinstance(res, str):
            skipped.append({"work_id": work_id, "reason": res})
            log.debug("work %s skipped: %s", work_id, res)
            continue
        take = res[: max(left[s], 0)]
        if take:
            accepted.append((s, ref, take))
            left[s] -= len(take)
    return accepted


def _summary(manifest: list[dict], skipped: list, failed: list, seconds: float, key: str) -> dict:
    return {
        "key": key,
        "n_clips": len(manifest),
        "per_split": dict(Counter(e["split"] for e in manifest)),
        "per_genre": dict(sorted(Counter(e["genre"] for e in manifest).items())),
        "per_ensemble": dict(sorted(Counter(e["ensemble"] for e in manifest).items())),
        "with_drums": sum(e["drums"] is not None for e in manifest),
        "tempo_ramps": sum(e["tempo_start_bpm"] != e["tempo_end_bpm"] for e in manifest),
        "works": len({e["work_id"] for e in manifest}),
        "groups": len({e["group_id"] for e in manifest}),
        "audio_seconds": round(sum(e["seconds"] for e in manifest), 3),
        "skipped_works": len(skipped),
        "skipped": skipped,
        "failed_clips": len(failed),
        "failed": failed,
        "build_seconds": round(seconds, 2),
    }


# ---- reading a corpus ----------------------------------------------------------------------


@dataclass
class Clip:
    """One clip and its ground truth. Times in seconds from the clip start; `notes` rows are
    [onset s, offset s, MIDI pitch, instrument index]; `meta` holds the full manifest entry."""

    id: str
    audio_path: Path
    split: str
    genre: str
    work_id: str
    caption: str
    seconds: float
    sample_rate: int
    tempo_bpm: float
    key: dict
    beats: list[float]
    downbeats: list[float]
    notes: list[list]
    instruments: list[dict]
    sections: list[list]
    meta: dict = field(repr=False)

    @classmethod
    def from_entry(cls, entry: dict, root: Path) -> "Clip":
        names = (
            "id",
            "split",
            "genre",
            "work_id",
            "caption",
            "seconds",
            "sample_rate",
            "tempo_bpm",
            "key",
            "beats",
            "downbeats",
            "notes",
            "instruments",
            "sections",
        )
        return cls(audio_path=root / entry["audio"], meta=entry, **{n: entry[n] for n in names})

    @property
    def families(self) -> set[str]:
        """Instrument families present (pretty_midi's GM classes, plus "Drums")."""
        return {i["family"] for i in self.instruments}

    def load(self) -> np.ndarray:
        """The audio as float32: (samples,) mono or (samples, channels)."""
        import soundfile as sf

        audio, rate = sf.read(self.audio_path, dtype="float32")
        assert rate == self.sample_rate, f"{self.audio_path}: {rate} Hz, manifest says {self.sample_rate}"
        return audio


class Corpus:
    """A built corpus: iterate its clips, filter them, load audio, read ground truth."""

    def __init__(self, path: str | Path, clips: list[Clip] | None = None):
        self.path = Path(path)
        if not (self.path / "manifest.jsonl").is_file():
            raise FileNotFoundError(
                f"{self.path} holds no manifest.jsonl: build it with build_corpus(...) or python -m accelerando.data build"
            )
        if clips is None:
            with open(self.path / "manifest.jsonl") as f:
                clips = [Clip.from_entry(json.loads(line), self.path) for line in f]
        self.clips = clips
        meta = json.loads((self.path / "config.json").read_text())
        self.key, self.config, self.provenance = (
            meta["key"],
            config_from_dict(meta["config"]),
            meta["provenance"],
        )
        self.summary = json.loads((self.path / "summary.json").read_text())

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    def __getitem__(self, i: int | str) -> Clip:
        if isinstance(i, str):
            return next(c for c in self.clips if c.id == i)
        return self.clips[i]

    def __repr__(self) -> str:
        return f"Corpus({self.path}, {len(self)} clips, splits {self.splits})"

    @property
    def splits(self) -> dict[str, int]:
        return dict(Counter(c.split for c in self.clips))

    def filter(
        self,
        split: str | None = None,
        genre: str | None = None,
        family: str | None = None,
        ensemble: str | None = None,
        drums: bool | None = None,
    ) -> "Corpus":
        """The clips matching every given criterion (family matches case-insensitively)."""
        keep = [
            c
            for c in self.clips
            if (split is None or c.split == split)
            and (genre is None or c.genre == genre)
            and (family is None or family.lower() in {f.lower() for f in c.families})
            and (ensemble is None or c.meta["ensemble"] == ensemble)
            and (drums is None or (c.meta["drums"] is not None) == drums)
        ]
        return Corpus(self.path, keep)

    def load_audio(self, clip: Clip | int | str) -> np.ndarray:
        return (clip if isinstance(clip, Clip) else self[clip]).load()

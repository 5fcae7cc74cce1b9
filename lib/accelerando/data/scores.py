"""The scores: which music21 corpus files make up each genre, and what is read from each work.

music21 ships ~3,200 files (Bach chorales, Palestrina masses, Essen folk songs, quartets...).
A *work* is one piece: a file, or one tune (`X:` number) of a multi-tune ABC file. A *group* is
what must never straddle two splits: the movements of one quartet, the movements of one
Palestrina mass, the chorales of one Bach cantata, one O'Neill tune printed in two files.

`extract_work` parses a work once and keeps only what the corpus needs, as plain JSON (cached
on disk): notes per part in quarter lengths (ql), the bar grid, key signatures and section
boundaries. Everything downstream works on that dict, never on music21 objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

EXTRACT_VERSION = 2  # bump when the extracted dict changes: cached extractions are keyed on it
EPS = 1e-6  # quarter lengths: offsets from music21 are exact fractions turned into floats


@dataclass(frozen=True)
class Genre:
    """A genre of the corpus: where its scores live and how to play and describe it."""

    dirs: tuple[str, ...]  # folders of music21's corpus
    label: str  # noun for captions ("chorale")
    source: str  # where the scores come from, for the manifest
    tempo: tuple[float, float]  # BPM range of the score's beat, drawn log-uniformly
    polyphonic: bool


GENRES: dict[str, Genre] = {
    "chorale": Genre(("bach",), "chorale", "J.S. Bach, 371 chorales (music21 corpus)", (56, 100), True),
    "renaissance": Genre(
        ("palestrina",), "Renaissance mass movement", "Palestrina masses (music21 corpus)", (48, 84), True
    ),
    "madrigal": Genre(("monteverdi",), "madrigal", "Monteverdi madrigals (music21 corpus)", (60, 100), True),
    "medieval": Genre(
        ("trecento", "ciconia"), "medieval song", "Trecento and Ciconia (music21 corpus)", (60, 110), True
    ),
    "string_quartet": Genre(
        ("beethoven", "haydn", "mozart"),
        "string quartet movement",
        "Haydn, Mozart, Beethoven quartets (music21 corpus)",
        (60, 150),
        True,
    ),
    "folk_song": Genre(
        ("essenFolksong",), "folk song", "Essen folk song collection (music21 corpus)", (70, 130), False
    ),
    "fiddle_tune": Genre(
        ("ryansMammoth", "oneills1850", "airdsAirs", "miscFolk", "nottingham-dataset"),
        "fiddle tune",
        "Ryan's Mammoth, O'Neill's, Aird's airs, fife tunes (music21 corpus)",
        (80, 140),
        False,
    ),
}

_SCORE_EXTS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")
_EXCLUDE = ("mozart/k545",)  # a piano sonata among the quartets


@dataclass(frozen=True)
class WorkRef:
    """One piece: `path` relative to music21's corpus folder, `number` its ABC tune (or None)."""

    work_id: str
    path: str
    number: int | None
    genre: str
    group_id: str


def corpus_dir() -> Path:
    """music21's bundled corpus folder."""
    import music21

    return Path(music21.__file__).parent / "corpus"


def list_works(genre: str) -> list[WorkRef]:
    """All works of `genre`, sorted by id (a fixed order, whatever the file system says)."""
    base = corpus_dir()
    files = sorted(
        str(p.relative_to(base))
        for d in GENRES[genre].dirs
        for p in (base / d).rglob("*")
        if p.suffix in _SCORE_EXTS and "choraleAnalyses" not in p.parts
    )
    files = [f for f in files if not f.startswith(_EXCLUDE)]
    # Beethoven ships some movements twice (.krn and .mxl): keep the MusicXML.
    stems = {os.path.splitext(f)[0] for f in files if f.endswith(".mxl")}
    files = [f for f in files if not (f.endswith(".krn") and os.path.splitext(f)[0] in stems)]
    works: dict[str, WorkRef] = {}
    for rel in files:
        numbers = _abc_numbers(base / rel) if rel.endswith(".abc") else [None]
        for number in numbers:
            group = _group_id(rel, number)
            work_id = rel if number is None else f"{rel}#{number}"
            if rel.startswith("oneills1850/") and group in {w.group_id for w in works.values()}:
                continue  # O'Neill's files overlap: a tune number printed twice is one work
            works[work_id] = WorkRef(work_id, rel, number, genre, group)
    return sorted(works.values(), key=lambda w: w.work_id)


def _abc_numbers(path: Path) -> list[int]:
    """The `X:` reference numbers of an ABC file, in file order, each once."""
    text = path.read_text(encoding="latin-1")
    return list(dict.fromkeys(int(n) for n in re.findall(r"^X:\s*(\d+)", text, flags=re.M)))


def _group_id(rel: str, number: int | None) -> str:
    """The split unit a work belongs to (see the module docstring)."""
    parts = rel.split("/")
    stem = os.path.splitext(parts[-1])[0]
    if parts[0] in ("beethoven", "haydn", "mozart"):
        return "/".join(parts[:2]).removesuffix(".mxl")  # opus folder, or the opus file itself
    if parts[0] == "bach":
        return "bach/" + stem.split(".")[0]  # bwv26.6 -> the cantata bwv26
    if parts[0] == "palestrina":
        m = re.search(r"_(\d+)$", stem)  # Agnus_05, Kyrie_05, ...: the movements of mass 05
        return f"palestrina/mass_{m.group(1)}" if m else f"palestrina/{stem}"
    if parts[0] == "oneills1850":
        return f"oneills1850/{number}"  # tune numbers are global across O'Neill's files
    return rel if number is None else f"{rel}#{number}"


class SkipWork(Exception):
    """A work that cannot give clips (no metre, no notes, unparsable): skipped and logged."""


def extract_work(ref: WorkRef, cache_dir: Path | None = None) -> dict:
    """Parse `ref` and return its notes, bar grid, keys and boundaries (see module docstring).

    Cached as JSON in `cache_dir` under a name keyed on the work, `EXTRACT_VERSION` and the
    music21 version. Raises `SkipWork` with the reason when the work cannot be used.
    """
    import music21

    path = None
    if cache_dir is not None:
        tag = f"{ref.work_id}|{EXTRACT_VERSION}|{music21.__version__}"
        path = Path(cache_dir) / f"{hashlib.sha256(tag.encode()).hexdigest()[:20]}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            if "skip" in data:
                raise SkipWork(data["skip"])
            return data
    try:
        data = _extract(ref)
    except SkipWork as e:
        data = {"skip": str(e)}
    except Exception as e:  # music21 raises many types on malformed files
        data = {"skip": f"parse failed: {type(e).__name__}: {e}"[:300]}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    if "skip" in data:
        raise SkipWork(data["skip"])
    return data


def _extract(ref: WorkRef) -> dict:
    from music21 import converter, stream

    kwargs = {"number": ref.number} if ref.number is not None else {}
    # forceSource: parse the file itself; music21 would also write a pickle cache per file, and
    # the extracted JSON is this package's cache
    with warnings.catch_warnings():  # music21 warns about every overfull bar it repairs
        warnings.simplefilter("ignore")
        score = converter.parse(corpus_dir() / ref.path, forceSource=True, **kwargs)
    if isinstance(score, stream.Opus):
        raise SkipWork("file holds several scores")
    return read_score(score, ref)


def read_score(score, ref: WorkRef) -> dict:
    """The extracted dict (see `extract_work`) of a parsed music21 Score (or single Part).

    Pitches and key signatures are read at sounding pitch: MusicXML writes a B-flat clarinet a
    tone above what it plays and a piccolo or double bass an octave off, and the renderer plays
    MIDI numbers as they are, so a written-pitch part would sound out of tune with the others
    and give the wrong key. Ottava lines are resolved the same way.
    """
    from music21 import expressions, key, meter

    score = score.toSoundingPitch()  # a copy: the caller's score stays as written
    parts = list(score.parts) or [score]
    measures = _bar_grid(parts[0], meter)
    if not measures:
        raise SkipWork("no time signature or no measures")

    out_parts, fermatas = [], []
    for i, part in enumerate(parts):
        notes, fermatas_i = _merge_ties(part.flatten().notes, expressions)
        fermatas += fermatas_i
        if notes:
            notes.sort()
            out_parts.append({"name": part.partName or f"part {i + 1}", "notes": notes})
    fermatas = {round(n[0] + n[1], 6) for n in fermatas}  # a fermata closes a phrase
    if not out_parts:
        raise SkipWork("no notes")

    flat0 = parts[0].flatten()
    keys = []
    for k in flat0.getElementsByClass(key.KeySignature):
        mode = k.mode if isinstance(k, key.Key) else None
        tonic = k.tonic.pitchClass if isinstance(k, key.Key) else None
        keys.append([float(k.offset), int(k.sharps), mode, tonic])

    bounds = [[t, "fermata"] for t in sorted(fermatas)]
    bounds += _barline_bounds(parts[0])
    bounds += [[k[0], "key_change"] for k in keys if k[0] > EPS]
    bounds += [[m[0], "metre_change"] for a, m in zip(measures, measures[1:]) if m[6] != a[6]]
    if len(out_parts) == 1:
        bounds += _rest_bounds(flat0, measures)
    seen, sections = set(), []
    for t, kind in sorted(bounds):
        if round(t, 4) not in seen:
            seen.add(round(t, 4))
            sections.append([t, kind])

    md = score.metadata
    return {
        "work_id": ref.work_id,
        "genre": ref.genre,
        "group_id": ref.group_id,
        "title": (md.title or md.movementName or os.path.basename(ref.path))
        if md
        else os.path.basename(ref.path),
        "composer": (md.composer if md else None) or None,
        "parts": out_parts,
        # [offset_ql, dur_ql, bar_start_ql, bar_ql, beat_ql, beat_count, time signature]
        "measures": measures,
        "keys": keys,  # [offset_ql, sharps, mode or None, tonic pitch class or None]
        "sections": sections,  # [offset_ql, kind]
        "length_ql": float(score.highestTime),
    }


def _merge_ties(notes, expressions) -> tuple[list[list], list[list]]:
    """[onset ql, duration ql, MIDI pitch] rows with tied notes merged into one (music21's
    stripTies does the same but costs ~10x the parse on a quartet movement); and the rows that
    carry a fermata."""
    rows, open_ties, fermata_rows = [], {}, []
    for n in notes:
        if n.duration.isGrace or n.duration.quarterLength <= 0:
            continue  # grace notes take no time in the bar grid
        onset, dur = float(n.offset), float(n.duration.quarterLength)
        has_fermata = any(isinstance(e, expressions.Fermata) for e in n.expressions)
        for p in n.pitches:
            midi = int(round(p.ps))
            tie = n.getTie(p) if n.isChord else n.tie
            kind = tie.type if tie is not None else None
            row = open_ties.get(midi)
            if kind in ("stop", "continue") and row is not None and abs(row[0] + row[1] - onset) < 1e-3:
                row[1] = round(onset + dur - row[0], 6)  # extend the note the tie started
            else:
                row = [round(onset, 6), round(dur, 6), midi]
                rows.append(row)
            if kind in ("start", "continue"):
                open_ties[midi] = row
            else:
                open_ties.pop(midi, None)
            if has_fermata:
                fermata_rows.append(row)
    return rows, fermata_rows


def _bar_grid(part, meter) -> list[list]:
    """One row per measure: where it starts, how long it is, where its bar's downbeat lies.

    A partial measure is a pickup (right-aligned: its bar began before it) when it opens the
    piece or completes the partial measure before it; otherwise it is a bar cut short
    (left-aligned: a repeat or the end). ABC tunes split bars this way around repeat signs.
    """
    rows, ts, prev = [], None, None
    for m in part.getElementsByClass("Measure"):
        ts = m.timeSignature or ts
        if ts is None:
            continue
        offset, dur = float(m.offset), float(m.duration.quarterLength)
        bar = float(ts.barDuration.quarterLength)
        if dur <= EPS or bar <= EPS:
            continue
        start = offset
        if dur < bar - EPS:
            pickup = (
                not rows
                or (m.paddingLeft or 0) > EPS
                or (
                    prev is not None
                    and prev[2] == prev[0]
                    and prev[1] < prev[3] - EPS
                    and abs(prev[1] + dur - bar) < EPS
                )
            )
            start = offset + dur - bar if pickup else offset
        row = [
            offset,
            dur,
            start,
            bar,
            float(ts.beatDuration.quarterLength),
            int(ts.beatCount),
            ts.ratioString,
        ]
        rows.append(row)
        prev = row
    return rows


def _barline_bounds(part) -> list[list]:
    """Double bars, final bars and repeat signs of the top part, as section boundaries."""
    from music21 import bar

    out = []
    for m in part.getElementsByClass("Measure"):
        end = float(m.offset + m.duration.quarterLength)
        for b, t in ((m.leftBarline, float(m.offset)), (m.rightBarline, end)):
            if isinstance(b, bar.Repeat):
                out.append([t, "repeat"])
            elif b is not None and b.type in ("double", "final", "light-light", "light-heavy", "heavy-light"):
                out.append([t, "double_bar"])
    return out


def _rest_bounds(flat, measures: list[list]) -> list[list]:
    """In a melody, a rest of at least one beat ends a phrase (a singer breathes there)."""
    beat = measures[0][4]
    return [
        [float(r.offset), "rest"]
        for r in flat.getElementsByClass("Rest")
        if r.duration.quarterLength >= beat - EPS and r.offset > EPS
    ]

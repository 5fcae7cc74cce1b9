"""accelerando.data: determinism, splits, ground truth, audio, bad input (tiny preset, seconds)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("music21")
pytest.importorskip("midirenderer")

from accelerando.data import Corpus, CorpusConfig, SpeechConfig, build_corpus, build_speech_corpus, preset  # noqa: E402
from accelerando.data.__main__ import main  # noqa: E402
from accelerando.data.arrange import realize  # noqa: E402
from accelerando.data.render import RenderError, normalise, render_events  # noqa: E402
from accelerando.data.scores import SkipWork, WorkRef, extract_work, list_works  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Corpus:
    return build_corpus(preset("tiny"), root=tmp_path_factory.mktemp("data"))


def _files(corpus: Corpus) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((corpus.path / "audio").iterdir())}


def test_same_seed_same_corpus_whatever_the_workers(tiny, tmp_path):
    again = build_corpus(preset("tiny", workers=2), root=tmp_path)  # other root, other process count
    assert again.path.name == tiny.path.name  # workers is not part of the cache key
    assert (again.path / "manifest.jsonl").read_bytes() == (tiny.path / "manifest.jsonl").read_bytes()
    assert _files(again) == _files(tiny)  # bit-identical audio


def test_cache_is_reused_and_keyed_on_the_config(tiny):
    stamp = (tiny.path / "manifest.jsonl").stat().st_mtime_ns
    assert build_corpus(preset("tiny"), root=tiny.path.parent).path == tiny.path
    assert (tiny.path / "manifest.jsonl").stat().st_mtime_ns == stamp  # not rebuilt
    other = build_corpus(preset("tiny", seed=1), root=tiny.path.parent)
    assert other.path != tiny.path and other.path.parent == tiny.path.parent
    assert [c.caption for c in other] != [c.caption for c in tiny]


def test_splits_are_disjoint_by_work_and_group(tiny):
    assert tiny.splits == {"train": 4, "val": 1, "test": 1}
    for field in ("work_id", "group_id"):
        owner = {}
        for c in tiny:
            assert owner.setdefault(c.meta[field], c.split) == c.split
    # the rule is a pure function of the group: every chorale of one cantata shares a split
    from accelerando.data import split_of

    groups = {}
    for w in list_works("chorale"):
        groups.setdefault(w.group_id, set()).add(split_of(w.group_id, 0.1, 0.1))
    assert all(len(s) == 1 for s in groups.values())
    assert {s for v in groups.values() for s in v} == {"train", "val", "test"}


def test_ground_truth_is_consistent(tiny):
    for c in tiny:
        T, m = c.seconds, c.meta
        beats = np.array(c.beats)
        assert len(beats) >= 2 and beats[0] == 0.0 and np.all(np.diff(beats) > 0) and beats[-1] < T
        assert set(c.downbeats) <= set(c.beats) and c.downbeats[0] == 0.0  # clips open on a downbeat
        if m["tempo_start_bpm"] == m["tempo_end_bpm"]:
            np.testing.assert_allclose(np.diff(beats), 60 / c.tempo_bpm, atol=1e-5)
        else:  # linear ramp: each beat interval matches the tempo curve at that beat
            bpm = np.array([b for _, b in m["tempo_curve"]])
            np.testing.assert_allclose(np.diff(beats), 60 / bpm[:-1], rtol=0.05)
        notes = np.array(c.notes)
        assert np.all((0 <= notes[:, 0]) & (notes[:, 0] < notes[:, 1]) & (notes[:, 1] <= T + 1e-9))
        assert np.all((21 <= notes[:, 2]) & (notes[:, 2] <= 108))
        assert set(notes[:, 3].astype(int)) <= {i["index"] for i in c.instruments if not i["is_drum"]}
        assert all(0 < t < T for t, _ in c.sections)
        assert all(0 <= t < T for t, _ in m["drum_hits"]) and (m["drums"] is None) == (not m["drum_hits"])
        # the caption is made from the truth: key, tempo and who plays
        assert c.key["name"] in c.caption and str(round(m["tempo_start_bpm"])) in c.caption
        pitched = [i for i in c.instruments if not i["is_drum"]]
        assert any(
            w in c.caption.lower()
            for w in [i["name"].lower() for i in pitched]
            + [
                m["ensemble"].replace("_", " "),
                "organ",
                "choir",
                "piano",
                "string",
                "brass",
                "wood",
                "sax",
                "guitar",
                "mallet",
                "synth",
                "chamber",
                "harpsichord",
            ]
        )
        assert ("drum" in c.caption) == (m["drums"] is not None)


def test_transposition_moves_key_and_notes_together(tiny):
    clip = tiny[0]
    ref = next(w for w in list_works(clip.genre) if w.work_id == clip.work_id)
    work = extract_work(ref, tiny.path.parent / "scores")
    from accelerando.data.arrange import ClipPlan

    plan = ClipPlan(**clip.meta["plan"])
    for shift in (-3, 0, 4):
        moved = realize(work, replace(plan, transpose=plan.transpose + shift), clip.seconds)
        assert [n[2] for n in moved["notes"]] == [n[2] + shift for n in sorted(clip.notes)]
        assert moved["key"]["pitch_class"] == (clip.key["pitch_class"] + shift) % 12
        assert moved["key"]["mode"] == clip.key["mode"]


def test_key_agrees_with_music21_reanalysis(tiny):
    from music21 import analysis, note, stream

    exact = related = 0
    for c in tiny:
        s = stream.Stream()
        for on, off, pitch, _ in c.notes:  # seconds stand in for quarter lengths: only ratios count
            n = note.Note(int(pitch))
            n.quarterLength = round(off - on, 3)
            s.insert(round(on, 3), n)
        k = analysis.discrete.KrumhanslKessler().getSolution(s)
        est, truth = (k.tonic.pitchClass, k.mode), (c.key["pitch_class"], c.key["mode"])
        exact += est == truth
        # same key signature family: identical, relative, or a fifth away in the same mode
        d = (est[0] - truth[0]) % 12
        related += (
            est == truth or (est[1] != truth[1] and d in (3, 9)) or (est[1] == truth[1] and d in (5, 7))
        )
    assert exact >= len(tiny) - 2 and related == len(tiny)


def test_audio_is_real_and_right_shape(tiny):
    for c in tiny:
        audio = c.load()
        assert audio.dtype == np.float32 and audio.shape == (round(c.seconds * c.sample_rate),)
        assert (
            np.all(np.isfinite(audio))
            and 0.05 < np.sqrt(np.mean(audio**2)) < 0.2
            and np.abs(audio).max() <= 0.9
        )
    assert tiny.filter(split="train", genre="chorale").clips and not tiny.filter(genre="madrigal").clips
    drums = tiny.filter(drums=True)
    assert drums.clips and all("Drums" in c.families for c in drums)


def test_audio_carries_the_ground_truth(tiny):
    pytest.importorskip("librosa")
    from accelerando.data.validate import beat_figures, chroma_correlation

    corr = [chroma_correlation(c) for c in tiny]
    assert min(corr) > 0.6 and np.mean(corr) > 0.8, corr
    ratios = [beat_figures(c)["onset_ratio"] for c in tiny.filter(drums=True)]
    assert min(ratios) > 1.5, ratios  # onset strength peaks on the beats


def test_bad_configs_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="seconds"):
        CorpusConfig(seconds=0)
    with pytest.raises(ValueError, match="32000 for MusicGen"):
        CorpusConfig(sample_rate=8000)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="choose from"):
        CorpusConfig(genres={"jazz": 1.0})
    with pytest.raises(ValueError, match="soundfont"):
        CorpusConfig(soundfont=str(tmp_path / "missing.sf2"))
    with pytest.raises(ValueError, match="lower n_clips"):
        build_corpus(CorpusConfig(n_clips=10_000, genres={"string_quartet": 1.0}), root=tmp_path)


def test_failures_are_skipped_and_logged_never_silent(tmp_path, monkeypatch):
    with pytest.raises(SkipWork, match="parse failed"):
        extract_work(WorkRef("nothing.abc#1", "nothing.abc", 1, "folk_song", "x"), tmp_path)
    assert json.loads(next(tmp_path.iterdir()).read_text())["skip"].startswith("parse failed")  # cached too
    with pytest.raises(RenderError, match="silent"):
        render_events([{"program": 0, "is_drum": False, "pan": 64, "notes": []}], 1.0, 16000, 1)
    with pytest.raises(RenderError, match="NaN"):
        normalise(np.full((100, 1), np.nan, np.float32))
    import sys

    monkeypatch.setitem(sys.modules, "midirenderer", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install midirenderer"):
        render_events(
            [{"program": 0, "is_drum": False, "pan": 64, "notes": [[0.0, 0.5, 60, 90]]}], 1.0, 16000, 1
        )


def test_cli_prints_a_summary(tiny, capsys):
    assert main(["build", "--preset", "tiny", "--out", str(tiny.path.parent)]) == 0
    out = capsys.readouterr().out
    assert str(tiny.path) in out and "splits" in out and "chorale" in out and "time" in out


def test_speech_corpus_is_deterministic_with_transcripts(tmp_path):
    pytest.importorskip("espeakng_loader")
    config = SpeechConfig(n_utterances=5)
    a = build_speech_corpus(config, root=tmp_path / "a")
    b = build_speech_corpus(config, root=tmp_path / "b")
    assert (
        len(a) == 5 and (a.path / "manifest.jsonl").read_bytes() == (b.path / "manifest.jsonl").read_bytes()
    )
    for u, v in zip(a, b):
        audio = u.load()
        assert u.transcript and audio.ndim == 1 and np.abs(audio).max() > 0.05 and u.sample_rate == 16000
        assert abs(len(audio) / 16000 - u.seconds) < 1e-3
        assert Path(u.audio_path).read_bytes() == Path(v.audio_path).read_bytes()
    with pytest.raises(ValueError, match="words per minute"):
        SpeechConfig(rates_wpm=(1000,))


def test_stereo_and_other_rates_render_to_the_right_shape(tiny):
    clip = tiny[0]
    ref = next(w for w in list_works(clip.genre) if w.work_id == clip.work_id)
    from accelerando.data.arrange import ClipPlan

    events = realize(extract_work(ref, tiny.path.parent / "scores"), ClipPlan(**clip.meta["plan"]), 2.0)[
        "events"
    ]
    for rate in (32_000, 44_100, 48_000):
        stereo = render_events(events, 2.0, rate, channels=2)
        assert stereo.shape == (2 * rate, 2) and np.all(np.isfinite(stereo))
    assert np.abs(stereo[:, 0] - stereo[:, 1]).max() > 1e-3  # parts are panned apart


def test_transposing_parts_are_read_and_rendered_at_sounding_pitch(tmp_path):
    """A B-flat clarinet written in D major sounds in C; a double bass sounds an octave below."""
    from music21 import converter, instrument, key, meter, note, stream

    from accelerando.data.arrange import ClipPlan
    from accelerando.data.scores import read_score

    score = stream.Score()
    for inst, written, ks in (
        (instrument.Clarinet(), ["D4", "E4", "F#4", "D4"], key.Key("D")),  # sounds C4 D4 E4 C4
        (instrument.Piano(), ["C4", "G3", "C4", "E4"], key.Key("C")),
        (instrument.Contrabass(), ["C3", "G3", "C3", "C3"], key.Key("C")),  # sounds C2 G2 C2 C2
    ):
        part = stream.Part()
        part.insert(0, inst)
        for bar in range(2):
            m = stream.Measure(number=bar + 1)
            if bar == 0:
                m.insert(0, meter.TimeSignature("4/4"))
                m.insert(0, ks)
            for name in written:
                m.append(note.Note(name, quarterLength=1.0))
            part.append(m)
        score.insert(0, part)
    # round-trip through MusicXML, as the corpus reads it: parts arrive at written pitch
    score.write("musicxml", fp=tmp_path / "transposing.musicxml")
    parsed = converter.parse(tmp_path / "transposing.musicxml", forceSource=True)
    ref = WorkRef("test/transposing", "test/transposing.musicxml", None, "chorale", "test/transposing")
    work = read_score(parsed, ref)

    clarinet, piano, bass = ([n[2] for n in p["notes"][:4]] for p in work["parts"])
    assert clarinet == [60, 62, 64, 60]
    assert piano == [60, 55, 60, 64]
    assert bass == [36, 43, 36, 36]
    assert work["keys"][0][1] == 0 and work["keys"][0][3] in (None, 0)  # C major, not D major

    plan = ClipPlan("test/transposing", 0, 0, 0.0, 8.0, 120.0, 120.0, 0, "piano", None, False, 0)
    truth = realize(work, plan, 4.0, rng_jitter=False)
    assert truth["key"]["pitch_class"] == 0 and truth["key"]["mode"] == "major"
    rendered = sorted(int(n[2]) for n in truth["notes"])
    assert rendered == sorted(p for part in (clarinet, piano, bass) for p in part * 2)

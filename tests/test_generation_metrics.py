"""Prompt adherence (key, tempo), the generation scorecard and the chapters' audio players."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from accelerando.metrics import get_embedding
from accelerando.metrics.adherence import estimate_tempo, prompt_adherence, tempo_accuracy
from accelerando.metrics.generation import embed_set, score_generation

SR = 22050


def clicks(bpm: float, seconds: float = 12.0, sr: int = SR) -> torch.Tensor:
    """A decaying 1 kHz blip on every beat: [1, samples]."""
    t = np.arange(int(seconds * sr)) / sr
    phase = (t * bpm / 60.0) % 1.0
    wav = np.sin(2 * np.pi * 1000 * t) * np.exp(-phase * 60.0 / bpm * 40)
    return torch.from_numpy(0.5 * wav.astype(np.float32))[None]


def chord(pitches: list[int], seconds: float = 6.0, sr: int = SR) -> torch.Tensor:
    t = np.arange(int(seconds * sr)) / sr
    wav = sum(np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * t) for p in pitches) / len(pitches)
    return torch.from_numpy(0.5 * wav.astype(np.float32))[None]


def test_tempo_accuracy_levels():
    assert tempo_accuracy(100.0, 100.0) == (1.0, 1.0)
    assert tempo_accuracy(200.0, 100.0) == (0.0, 1.0)  # double: right metrical level only for Acc2
    assert tempo_accuracy(130.0, 100.0) == (0.0, 0.0)
    assert tempo_accuracy(None, 100.0) == (None, None)
    with pytest.raises(ValueError, match="positive"):
        tempo_accuracy(100.0, 0.0)


def test_click_track_tempo_is_found():
    est = estimate_tempo(clicks(96.0), SR)
    assert est is not None and tempo_accuracy(est, 96.0)[1] == 1.0


def test_prompt_adherence_key_and_missing_fields():
    c_major = chord([60, 64, 67, 72, 76])  # C E G
    row = prompt_adherence(c_major, SR, "C major", None)
    assert row["key_mirex"] >= 0.5 and row["tempo_bpm"] is None and row["tempo_acc2"] is None
    assert prompt_adherence(c_major, SR, "F# major", None)["key_mirex"] < row["key_mirex"]


def test_scorecard_orders_real_above_noise():
    rng = np.random.default_rng(0)
    real = [chord([60 + int(k), 64 + int(k), 67 + int(k)]) + 0.01 * torch.randn(1, 6 * SR) for k in rng.integers(0, 5, 8)]
    ref = [chord([60 + int(k), 64 + int(k), 67 + int(k)]) + 0.01 * torch.randn(1, 6 * SR) for k in rng.integers(0, 5, 8)]
    noise = [0.3 * torch.randn(1, 6 * SR) for _ in range(8)]
    emb = {"mel-stats": get_embedding("mel-stats")}
    reference = embed_set(ref, SR, emb)
    n = len(real)
    _, s_real = score_generation(real, SR, ["a chord"] * n, ["C major"] * n, [None] * n, reference, emb)
    rows, s_noise = score_generation(noise, SR, ["a chord"] * n, ["C major"] * n, [None] * n, reference, emb)
    assert s_real["kad_mel-stats"].value < s_noise["kad_mel-stats"].value
    assert "clap" not in s_noise and len(rows) == n and rows["clap"].isna().all()  # no CLAP model given
    with pytest.raises(ValueError, match="one of each"):
        score_generation(real, SR, ["a chord"], ["C major"] * n, [None] * n, reference, emb)
    with pytest.raises(ValueError, match="no reference vectors"):
        score_generation(real, SR, ["a chord"] * n, ["C major"] * n, [None] * n, {}, emb)


def test_audio_player_writes_a_small_file_and_links_it(tmp_path, monkeypatch):
    from accelerando.players import NOTEBOOK_DIR_ENV, audio_player
    from accelerando.record import RECORD_DIR_ENV

    monkeypatch.setenv(RECORD_DIR_ENV, str(tmp_path / "book" / "records"))
    monkeypatch.setenv(NOTEBOOK_DIR_ENV, str(tmp_path / "book" / "chapters"))
    html = audio_player(chord([60, 64, 67]), SR, "c_major", "99_test", caption="a <C> chord").data
    path = tmp_path / "book" / "audio" / "99_test" / "c_major.ogg"
    assert path.is_file() and path.stat().st_size < 100_000
    assert 'src="../audio/99_test/c_major.ogg"' in html and "a &lt;C&gt; chord" in html
    info = sf.info(str(path))
    assert info.samplerate == SR and info.format == "OGG"
    loud = audio_player(3.0 * chord([60]), SR, "loud", "99_test").data  # scaled down, and it says so
    assert "scaled by 1/" in loud
    with pytest.raises(ValueError, match="file stem"):
        audio_player(chord([60]), SR, "a/b", "99_test")


def test_chroma_correlation_tracks_pitch_content():
    from accelerando.metrics.adherence import chroma_correlation

    c, c_again, f_sharp = chord([60, 64, 67]), chord([48, 64, 79]), chord([66, 70, 73])
    assert chroma_correlation(c, c_again, SR) > 0.8
    assert chroma_correlation(c, f_sharp, SR) < 0.3


def test_pulse_is_strong_at_the_clicks_tempo_only_and_onsets_are_counted():
    from accelerando.metrics.rhythm import beat_pulse, onset_density

    track = clicks(120.0, seconds=8.0)
    assert beat_pulse(track, SR, 120.0) > 0.6
    assert beat_pulse(track, SR, 120.0 * 1.37) < 0.2
    noise = torch.randn(1, 8 * SR, generator=torch.Generator().manual_seed(0)) * 0.1
    assert abs(beat_pulse(noise, SR, 120.0)) < 0.2
    with pytest.raises(ValueError, match="silent"):
        beat_pulse(torch.zeros(1, 8 * SR), SR, 120.0)
    assert onset_density(track, SR) == pytest.approx(2.0, abs=0.3)  # two clicks a second
    with pytest.raises(ValueError, match="positive"):
        beat_pulse(track, SR, 0.0)


def test_baselines_read_a_generator_against_clips_noise_and_shuffled_prompts(tmp_path):
    from accelerando.metrics.generation import board, music_goals, score_with_baselines, shuffled_order

    class Clip:
        def __init__(self, i, bpm):
            self.caption, self.key, self.tempo_bpm, self.sample_rate = f"clip {i} at {bpm} BPM", {"name": "C major"}, bpm, SR
            self.audio = clicks(bpm, seconds=6.0)[0].numpy()

        def load(self):
            return self.audio

    clips = [Clip(i, bpm) for i, bpm in enumerate([80, 100, 120, 140])]
    by_caption = {c.caption: torch.from_numpy(c.audio)[None] for c in clips}
    embedders = {"mel-stats": get_embedding("mel-stats")}
    reference = embed_set([torch.from_numpy(c.audio)[None] for c in clips], SR, embedders)
    # a perfect generator: the clip its caption describes
    per_clip, summary, _ = score_with_baselines({"copy": lambda prompts: [by_caption[p] for p in prompts]}, clips, SR, 6.0,
                                             reference, embedders)
    assert list(summary) == ["copy", "shuffled prompts", "corpus clips", "noise"]
    assert summary["copy"]["pulse"].value == pytest.approx(summary["corpus clips"]["pulse"].value)
    assert summary["copy"]["pulse"].value > summary["shuffled prompts"]["pulse"].value + 0.3
    assert summary["noise"]["pulse"].value < 0.2
    assert board(summary).loc["copy", "tempo Acc2"].startswith("1.00")
    goals = music_goals(summary, "copy")
    assert goals.loc["pulse at the beat lag", "met"] and goals.loc["onsets per second", "met"]
    assert not music_goals(summary, "noise").loc["pulse at the beat lag", "met"]
    assert (shuffled_order(5, seed=3) != np.arange(5)).all()
    with pytest.raises(ValueError, match="shorter"):
        score_with_baselines({"short": lambda p: [torch.zeros(1, SR)] * len(p)}, clips, SR, 6.0, reference, embedders)

"""Long-form coherence: a piece that keeps its key, tempo and timbre scores as coherent; one that
changes key half-way, or changes timbre, does not."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

SR = 16000
MAJOR = (0, 4, 7, 12)


def _notes(tonic_hz: float, seconds: float, bpm: float = 120.0, bright: bool = False) -> torch.Tensor:
    """An arpeggio of a major triad, one plucked note per beat: [1, samples]."""
    beat = 60.0 / bpm
    t = np.arange(int(beat * SR)) / SR
    out = []
    for i in range(int(seconds / beat)):
        f = tonic_hz * 2 ** (MAJOR[i % 4] / 12)
        tone = sum(np.sin(2 * np.pi * f * h * t) / h ** (0.5 if bright else 2) for h in range(1, 6))
        out.append(tone * np.exp(-t * 6))
    return torch.from_numpy(0.2 * np.concatenate(out)).float()[None]


def test_a_steady_piece_is_coherent_and_a_key_change_is_seen():
    from accelerando.bench.long_form import coherence, segment_rows

    steady = _notes(261.63, 30.0)
    changed = torch.cat([_notes(261.63, 20.0), _notes(369.99, 10.0)], dim=-1)  # C major, then F# major
    a, b = coherence(steady, SR), coherence(changed, SR)
    assert a["segments"] == b["segments"] == 3
    assert a["key_kept"] == 1.0 and b["key_kept"] == 0.5
    assert a["key_stability"] > b["key_stability"]
    assert a["beat_consistency"] > 0.9
    assert a["rolloff_cv"] < 0.05
    seg = segment_rows(changed, SR)
    assert list(seg["start_s"]) == [0.0, 10.0, 20.0] and not seg["same_key_as_first"].iloc[2]


def test_timbre_drift_moves_the_rolloff_and_the_clap_self_similarity():
    from accelerando.bench.long_form import coherence

    drifted = torch.cat([_notes(261.63, 20.0), _notes(261.63, 10.0, bright=True)], dim=-1)
    steady = _notes(261.63, 30.0)

    def embed_audio(wav, sr):  # a stand-in for CLAP-Lite: the segments' brightness as a direction
        high = torch.stack([w.diff().abs().mean() / w.abs().mean() for w in wav])
        return torch.stack([torch.ones_like(high), 10 * (high - high[0])], dim=-1)

    clap = SimpleNamespace(embed_audio=embed_audio, embed_text=lambda texts: torch.tensor([[1.0, 0.0]]))
    a, b = coherence(steady, SR, clap, "a march"), coherence(drifted, SR, clap, "a march")
    assert b["rolloff_cv"] > 3 * a["rolloff_cv"]
    assert a["clap_self_similarity"] == pytest.approx(1.0) and b["clap_self_similarity"] < a["clap_self_similarity"]
    assert a["clap_to_prompt_first"] == pytest.approx(1.0)


def test_long_form_rows_and_board_from_pipelines():
    from accelerando.bench.long_form import coherence_board, long_form_rows

    class Pipe:
        sample_rate = SR

        def __init__(self, tonic):
            self.tonic = tonic

        def __call__(self, prompts, seconds, seed=0, **kw):
            return torch.stack([_notes(self.tonic, seconds) for _ in prompts]), {}

    rows, segs, audio = long_form_rows({"C": Pipe(261.63), "D": Pipe(293.66)}, ["a", "b", "c"], seconds=20.0)
    assert len(rows) == 6 and len(segs) == 12 and audio["C"].shape == (3, 1, 20 * SR)
    board = coherence_board(rows)
    assert list(board.index) == ["C", "D"] and board.loc["C", "first key kept"].startswith("1")


def test_a_piece_shorter_than_a_segment_is_refused():
    from accelerando.bench.long_form import segments

    with pytest.raises(ValueError, match="no whole segment"):
        segments(torch.zeros(1, SR * 5), SR, 10.0)


def test_paired_coherence_sees_which_system_keeps_its_key():
    from accelerando.bench.long_form import coherence_paired, long_form_rows

    class Pipe:
        sample_rate = SR

        def __init__(self, change: bool):
            self.change = change

        def __call__(self, prompts, seconds, seed=0, **kw):
            tail = 369.99 if self.change else 261.63
            return torch.stack([torch.cat([_notes(261.63, 10.0), _notes(tail, seconds - 10.0)], -1) for _ in prompts]), {}

    rows, _, _ = long_form_rows({"keeps": Pipe(False), "wanders": Pipe(True)}, ["a", "b", "c", "d"], seconds=20.0)
    paired = coherence_paired(rows, "keeps", "wanders").set_index("measure")
    assert paired.loc["first key kept", "difference"] == 1.0 and paired.loc["first key kept", "pieces"] == 4

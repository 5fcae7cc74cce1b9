import numpy as np
import pytest

from accelerando.musical_controls import CONTROL_CHANNELS, MusicalControls, beat_grid, beats_per_bar, control_features

FPS = 21.533203125


@pytest.mark.parametrize("signature, count", [("4/4", 4), ("3/4", 3), ("6/8", 2), ("9/8", 3), ("12/8", 4),
                                              ("3/8", 1), ("2/2", 2), ("4/2", 4), ("6/4", 2), ("7/4", 7)])
def test_beats_per_bar_counts_dotted_beats_in_compound_metres(signature, count):
    assert beats_per_bar(signature) == count


def test_caption_controls_give_the_stated_tempo_metre_and_key():
    c = MusicalControls.from_caption("Choir aahs playing a folk song melody in Eb minor, 3/4 time, at 90 BPM", 10.0)
    assert c.key == (3, "minor")
    assert np.allclose(np.diff(c.beats), 60 / 90)
    assert np.allclose(np.diff(c.downbeats), 3 * 60 / 90)
    f = c.features(215, FPS)
    assert f.shape == (CONTROL_CHANNELS, 215) and f.dtype == np.float32
    # the beat indicator fires once per beat, at the beat's frame
    hits = np.flatnonzero(f[4])
    assert len(hits) == len([b for b in c.beats if b * FPS < 215])
    assert np.allclose(hits, np.floor(np.array(c.beats[: len(hits)]) * FPS))
    # the beat phase is periodic at the beat lag: sin/cos repeat after one beat (within a frame's rounding)
    lag = 60 / 90 * FPS
    assert np.corrcoef(f[0, :-int(round(lag))], f[0, int(round(lag)):])[0, 1] > 0.9


def test_ramps_and_missing_parts():
    ramp = MusicalControls.from_caption("A chorale slowing down from 120 to 60 BPM, in 4/4", 10.0)
    gaps = np.diff(ramp.beats)
    assert gaps[0] == pytest.approx(0.5) and (np.diff(gaps) > 0).all()
    only_key = MusicalControls.from_caption("A chorale in F# major", 5.0)
    assert only_key.beats is None and only_key.key == (6, "major")
    f = only_key.features(100, FPS)
    assert not f[:6].any() and f[6:].any()
    assert not control_features([None], 10, FPS).any()
    # frames past the controlled span are zero, as in training's silence padding
    g = MusicalControls.from_caption("at 100 BPM in C major", 2.0).features(100, FPS)
    assert g[:, : int(2.0 * FPS)].any() and not g[:, int(np.ceil(2.0 * FPS)):].any()


def test_clip_controls_match_the_annotation(tiny_corpus):
    clip = list(tiny_corpus)[0]
    c = MusicalControls.from_clip(clip)
    assert c.beats == tuple(clip.beats) and c.key[0] == clip.key["pitch_class"]


def test_bad_controls_are_refused():
    with pytest.raises(ValueError, match="at least two"):
        MusicalControls(beats=(0.0,))
    with pytest.raises(ValueError, match="pitch class"):
        MusicalControls(key=(3, "dorian"))
    with pytest.raises(ValueError, match="n/d"):
        beats_per_bar("waltz")
    with pytest.raises(ValueError, match="positive"):
        beat_grid(0, 100, 5)

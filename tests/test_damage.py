"""Controlled damage: identity at strength zero, the promised effect at known strengths."""

import numpy as np
import pytest

from accelerando.metrics.damage import DAMAGES, apply_damage, damage_sweep, monotonicity

SR = 16000


@pytest.fixture
def tone():
    t = np.arange(2 * SR) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)


ZERO = {"tempo_jitter": 0.0, "tempo_ramp": 0.0, "detune": 0.0, "modulate": 0.0, "lowpass": 0.0,
        "noise": float("inf"), "band_limit": 0.0, "smear": 0.0}


def test_every_damage_has_a_no_damage_strength(tone):
    assert set(ZERO) == set(DAMAGES)
    for name, strength in ZERO.items():
        np.testing.assert_allclose(apply_damage(name, tone, SR, strength), tone, atol=1e-6, err_msg=name)


def band_energy(x, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return spec[(f >= lo) & (f < hi)].sum()


def test_lowpass_removes_the_high_partial(tone):
    out = apply_damage("lowpass", tone, SR, 3500.0)
    assert band_energy(out, 5500, 6500) < 1e-4 * band_energy(tone, 5500, 6500)
    assert band_energy(out, 400, 480) == pytest.approx(band_energy(tone, 400, 480), rel=0.01)


def test_noise_has_the_requested_snr(tone):
    out = apply_damage("noise", tone, SR, 10.0, seed=1)
    snr = 10 * np.log10(np.mean(tone**2) / np.mean((out - tone) ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)


def test_tempo_ramp_speeds_playback_up(tone):
    out = apply_damage("tempo_ramp", tone, SR, 0.5)
    assert out.shape == tone.shape
    # the last quarter plays about 1.4x faster: the 440 Hz partial moves up
    last = out[-SR // 2:]
    peak = np.fft.rfftfreq(len(last), 1 / SR)[np.argmax(np.abs(np.fft.rfft(last * np.hanning(len(last)))))]
    assert 560 < peak < 700


def test_modulate_moves_the_second_half_only(tone):
    out = apply_damage("modulate", tone, SR, 2.0)
    np.testing.assert_allclose(out[: SR // 2], tone[: SR // 2], atol=1e-6)
    second = out[-SR // 2:]
    peak = np.fft.rfftfreq(len(second), 1 / SR)[np.argmax(np.abs(np.fft.rfft(second * np.hanning(len(second)))))]
    assert peak == pytest.approx(440 * 2 ** (2 / 12), rel=0.02)


def test_bad_inputs_name_the_problem(tone):
    with pytest.raises(ValueError, match="unknown damage 'wobble'"):
        apply_damage("wobble", tone, SR, 1.0)
    with pytest.raises(ValueError, match="mono"):
        apply_damage("noise", np.stack([tone, tone]), SR, 10.0)
    with pytest.raises(ValueError, match="fraction"):
        apply_damage("band_limit", tone, SR, 1.5)


def test_sweep_rows_and_monotonicity(tone):
    rows = damage_sweep({"a": (tone, {}), "b": (tone * 0.5, {})}, SR, "noise", [40.0, 20.0, 0.0],
                        {"err": lambda ref, gen, sr, truth: float(np.mean((gen - ref) ** 2) / np.mean(ref**2))})
    assert len(rows) == 2 * 3 and {r["severity"] for r in rows} == {0, 1, 2}
    means = [np.mean([r["value"] for r in rows if r["severity"] == s]) for s in range(3)]
    assert monotonicity(np.arange(3), np.array(means)) == pytest.approx(1.0)
    assert monotonicity(np.arange(3), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)


def test_verdict_checks_the_direction_not_only_the_magnitude():
    from accelerando.metrics.damage import moves_with_damage

    rising = np.array([0.1, 0.4, 0.9])
    assert moves_with_damage(np.arange(3), rising, higher_is_worse=True)  # a distance that grows
    assert not moves_with_damage(np.arange(3), rising, higher_is_worse=False)  # a score that grows: wrong way
    assert moves_with_damage(np.arange(3), rising[::-1], higher_is_worse=False)
    assert not moves_with_damage(np.arange(3), np.array([1.0, 1.46, 1.26]), higher_is_worse=False)

"""accelerando.audio: I/O round trips, resampling, and the clear errors of check_audio."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from accelerando.audio import AudioError, check_audio, check_pair, list_audio, load_audio, match_length, resample, save_audio

SR = 22050


def sine(freq=440.0, seconds=1.0, sr=SR, channels=1, amp=0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (amp * torch.sin(2 * torch.pi * freq * t)).repeat(channels, 1).float()


def test_save_load_round_trip_is_exact_and_keeps_channels(tmp_path):
    wav = torch.stack([sine(440)[0], sine(660)[0]])  # [2, samples]
    path = save_audio(tmp_path / "a.wav", wav, SR)
    back, sr = load_audio(path)
    assert sr == SR and back.dtype == torch.float32 and back.shape == (2, SR)
    assert torch.equal(back, wav)


def test_load_downmixes_and_upmixes_on_request(tmp_path):
    stereo = torch.stack([sine(440)[0], 0.5 * sine(660)[0]])
    save_audio(tmp_path / "s.wav", stereo, SR)
    mono, _ = load_audio(tmp_path / "s.wav", channels=1)
    assert mono.shape == (1, SR) and torch.allclose(mono[0], stereo.mean(0), atol=1e-7)
    save_audio(tmp_path / "m.wav", sine(), SR)
    dup, _ = load_audio(tmp_path / "m.wav", channels=2)
    assert dup.shape == (2, SR) and torch.equal(dup[0], dup[1])


def test_load_scales_int16_and_resamples(tmp_path):
    pcm = (sine(1000, sr=44100)[0].numpy() * 32767).astype(np.int16)
    sf.write(tmp_path / "i.wav", pcm, 44100, subtype="PCM_16")
    wav, sr = load_audio(tmp_path / "i.wav", sample_rate=16000)
    assert sr == 16000 and wav.shape == (1, 16000)
    assert abs(float(wav.abs().max()) - 0.5) < 0.01
    freqs = np.fft.rfftfreq(wav.shape[-1], 1 / 16000)
    assert abs(freqs[np.argmax(np.abs(np.fft.rfft(wav[0].numpy())))] - 1000) <= 1  # the tone stays at 1 kHz


def test_resample_is_identity_at_equal_rates_and_lengths_scale():
    x = sine(seconds=0.5)
    assert resample(x, SR, SR) is x
    assert resample(x, 22050, 44100).shape[-1] == 2 * x.shape[-1]
    assert resample(x, 48000, 16000).shape[-1] == int(np.ceil(x.shape[-1] / 3))


@pytest.mark.parametrize(
    "wav, sr, kwargs, match",
    [
        (torch.zeros(1, 0), SR, {}, "empty audio"),
        (torch.zeros(1, SR), SR, {}, "all silent.*undefined on silence"),
        (torch.tensor([[0.1, float("nan"), float("inf"), 0.2, float("-inf")]]), SR, {}, "3 of 5 samples are NaN or Inf"),
        (torch.ones(1, 100, dtype=torch.int16), SR, {}, "not floating point.*32768"),
        (sine()[0], SR, {}, r"\[channels, samples\].*wav\[None\]"),
        (sine(channels=2).T.contiguous(), SR, {}, "looks like \\[samples, channels\\]: transpose"),
        (sine(), SR, {"expected_sr": 44100}, "22050 Hz does not match the expected 44100 Hz: resample"),
        (sine(seconds=0.1), SR, {"min_seconds": 1.0}, "0.100 s is shorter than the 1.0 s"),
        ([0.1, 0.2], SR, {}, "expected a torch.Tensor or numpy array"),
        (sine(), 0, {}, "positive int"),
    ],
)
def test_check_audio_names_the_problem(wav, sr, kwargs, match):
    with pytest.raises(AudioError, match=match):
        check_audio(wav, sr, name="clip", **kwargs)


def test_check_audio_accepts_numpy_and_warns_on_clipping(caplog):
    x = np.clip(2 * sine().numpy(), -1, 1)
    with caplog.at_level(logging.WARNING, logger="accelerando.audio"):
        out = check_audio(x, SR, name="loud")
    assert isinstance(out, torch.Tensor)
    assert "loud" in caplog.text and "clipped" in caplog.text
    assert check_audio(torch.zeros(1, 10), SR, allow_silent=True).shape == (1, 10)


def test_pairs_need_equal_rates_and_lengths():
    a = sine()
    with pytest.raises(AudioError, match="reference is 22050 Hz but generated is 16000 Hz"):
        check_pair(a, a, SR, 16000)
    with pytest.raises(AudioError, match="lengths differ.*22050 samples"):
        check_pair(a, a[:, :-5000], SR, SR)
    r, g = match_length(a, a[:, :-100], SR)  # 4.5 ms of padding: cropped
    assert r.shape == g.shape == (1, SR - 100)
    with pytest.raises(AudioError, match="lengths differ"):
        match_length(a, a[:, : SR // 2], SR)


def test_list_audio_keys_by_stem_and_refuses_duplicates(tmp_path):
    save_audio(tmp_path / "x.wav", sine(), SR)
    save_audio(tmp_path / "y.flac", sine(), SR)
    (tmp_path / "notes.txt").write_text("not audio")
    assert sorted(list_audio(tmp_path)) == ["x", "y"]
    save_audio(tmp_path / "x.flac", sine(), SR)
    with pytest.raises(AudioError, match="two files share the name 'x'"):
        list_audio(tmp_path)

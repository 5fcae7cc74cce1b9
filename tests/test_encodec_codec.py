"""EnCodec tokenizer (transformers `EncodecModel`) behind the MusicGen-Lite codec interface:
shapes and code ranges, frame rate and bitrate against the config, clear errors, save/load, the
pipeline on its tokens and the codec fingerprint of MusicGen-Lite checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from accelerando.audio import AudioError
from accelerando.metrics.codec import codec_reconstruction
from accelerando.models.encodec_codec import ENCODEC_32KHZ, ENCODEC_TINY_CONFIG, EncodecTokenizer
from accelerando.models.musicgen_lite import (
    TINY_CONFIG,
    MusicGenLite,
    MusicGenLiteConfig,
    MusicGenLitePipeline,
    load_musicgen_lite,
    save_musicgen_lite,
)
from test_musicgen_lite import FakeText  # MiniLM's stand-in in tiny tests


@pytest.fixture(scope="module")
def tok() -> EncodecTokenizer:
    return EncodecTokenizer.from_config(ENCODEC_TINY_CONFIG, seed=0)


def audio(batch: int = 2, samples: int = 6500, sr: int = 32000, seed: int = 0) -> torch.Tensor:
    t = torch.arange(samples) / sr
    noise = torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed))
    return 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * noise


def test_encode_decode_shapes_and_code_ranges(tok):
    codes = tok.encode(audio())
    frames = math.ceil(6500 / 640)
    assert codes.shape == (2, 2, frames) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 16
    wav = tok.decode(codes)
    assert wav.shape == (2, 1, frames * 640) and torch.isfinite(wav).all()
    assert tok.decode(codes[:, :1]).shape == wav.shape  # the first codebook alone: the lowest bitrate
    rows = codec_reconstruction(tok, audio(batch=1)[0])
    assert [r["codebooks"] for r in rows] == [1, 2] and all(math.isfinite(r["mrstft"]) for r in rows)


def test_frame_rate_and_bitrate_follow_the_config(tok):
    assert tok.sample_rate == 32000 and tok.hop_length == 640 and tok.frame_rate == 50.0
    assert (tok.num_codebooks, tok.codebook_size) == (2, 16)
    assert tok.bitrate == pytest.approx(50 * 2 * 4) == pytest.approx(1000 * ENCODEC_TINY_CONFIG["target_bandwidths"][0])
    # facebook/encodec_32khz, as MusicGen uses it: 4 codebooks x 2048 at 50 Hz, 2.2 kbit/s (shapes only)
    big = EncodecTokenizer.from_config(ENCODEC_32KHZ)
    assert (big.sample_rate, big.frame_rate, big.num_codebooks, big.codebook_size) == (32000, 50.0, 4, 2048)
    assert big.bitrate == pytest.approx(2200)


def test_bad_input_names_the_fix(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="facebook/encodec_32khz"):
        EncodecTokenizer.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        EncodecTokenizer.from_pretrained(tmp_path / "empty")
    with pytest.raises(AudioError, match="32000 Hz.*resample"):
        tok.encode(audio(sr=22050), sr=22050)
    with pytest.raises(ValueError, match=r"\[batch, 1, samples\] at 32000 Hz"):
        tok.encode(audio().expand(2, 2, -1))
    with pytest.raises(AudioError, match="NaN"):
        tok.encode(torch.full((1, 1, 640), float("nan")))
    with pytest.raises(AudioError, match="silent"):
        tok.encode(torch.zeros(1, 1, 640))
    with pytest.raises(ValueError, match="not this codec's tokens"):
        tok.decode(torch.full((1, 2, 3), 16))
    with pytest.raises(ValueError, match=r"<= 2, frames"):
        tok.decode(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="offers"):
        EncodecTokenizer(tok.model, bandwidth=6.0)


def test_save_pretrained_round_trip_gives_identical_codes(tok, tmp_path):
    tok.model.save_pretrained(tmp_path / "encodec")
    loaded = EncodecTokenizer.from_pretrained(tmp_path / "encodec")
    x = audio()
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert loaded.weights_sha256 is not None and tok.weights_sha256 is None


@pytest.mark.parametrize("variant", ["a", "b"])
def test_musicgen_lite_pipeline_runs_on_encodec_tokens(variant, tok):
    torch.manual_seed(0)
    model = MusicGenLite(MusicGenLiteConfig(variant=variant, **TINY_CONFIG))
    pipe = MusicGenLitePipeline(model, tok, text_encoder=FakeText())
    assert pipe.sample_rate == 32000
    prompt = audio(batch=1, samples=3200)[0]  # 0.1 s: 5 frames of audio prompt
    audio_out, info = pipe(["x"], seconds=0.4, audio_prompt=prompt, audio_prompt_sr=32000, top_k=4)
    assert info["codes"].shape == (1, 2, 20) and audio_out.shape == (1, 1, 20 * 640)
    assert torch.isfinite(audio_out).all()
    with pytest.raises(ValueError, match="load the codec it was trained on"):
        MusicGenLitePipeline(MusicGenLite(MusicGenLiteConfig(**{**TINY_CONFIG, "codebook_size": 32})), tok,
                             text_encoder=FakeText())


def test_checkpoints_store_and_check_the_encodec_fingerprint(tok, tmp_path):
    tok.model.save_pretrained(tmp_path / "encodec")
    loaded = EncodecTokenizer.from_pretrained(tmp_path / "encodec")
    model = MusicGenLite(MusicGenLiteConfig(variant="a", **TINY_CONFIG))
    with pytest.raises(ValueError, match="built in memory"):
        save_musicgen_lite(model, tmp_path / "lm", tok)
    save_musicgen_lite(model, tmp_path / "lm", loaded)
    assert load_musicgen_lite(tmp_path / "lm", loaded).config.codebook_size == 16
    EncodecTokenizer.from_config(ENCODEC_TINY_CONFIG, seed=1).model.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="another codec"):
        load_musicgen_lite(tmp_path / "lm", EncodecTokenizer.from_pretrained(tmp_path / "other"))

"""Codec-Lite and codebook patterns: round trips, the RVQ's error falling with each codebook, save/load."""

from __future__ import annotations

import pytest
import torch

from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
from accelerando.models.latent_grouping import latent_channels
from accelerando.metrics.codec import codec_reconstruction
from accelerando.models.codec_lite import LatentCodec, ResidualVQ
from accelerando.models.patterns import (delay_pattern, flatten_pattern, sequence_steps, undelay_pattern,
                                         unflatten_pattern)


def test_patterns_round_trip_and_lengths():
    codes = torch.randint(0, 2048, (3, 4, 11))
    flat = flatten_pattern(codes)
    assert flat.shape == (3, 44) and flat[0, :4].tolist() == codes[0, :, 0].tolist()
    assert torch.equal(unflatten_pattern(flat, 4), codes)
    delayed = delay_pattern(codes, pad=2048)
    assert delayed.shape == (3, 4, 14)
    assert (delayed[:, 3, :3] == 2048).all() and torch.equal(delayed[:, 3, 3:], codes[:, 3])
    assert torch.equal(undelay_pattern(delayed), codes)
    assert sequence_steps("flatten", 11, 4) == 44 and sequence_steps("delay", 11, 4) == 14
    with pytest.raises(ValueError, match="pattern"):
        sequence_steps("spiral", 1, 1)
    with pytest.raises(ValueError, match="frames x 4"):
        unflatten_pattern(torch.zeros(1, 7, dtype=torch.long), 4)


def test_rvq_error_falls_with_each_codebook_and_codes_round_trip():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=gen) * torch.linspace(3, 0.3, 8)
    rvq = ResidualVQ.fit(x, codebooks=3, size=32, iters=10)
    z = x[:600].T.reshape(8, 2, 300).transpose(0, 1)  # [2, 8, 300]
    codes = rvq.encode(z)
    assert codes.shape == (2, 3, 300) and codes.dtype == torch.long
    errors = [float(((rvq.decode(codes[:, :k]) - z) ** 2).mean()) for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    assert torch.equal(rvq.encode(rvq.decode(codes[:, :1]), codebooks=1), codes[:, :1])  # a code vector maps to itself
    with pytest.raises(ValueError, match="not this codec"):
        rvq.decode(torch.full((1, 1, 3), 32))
    with pytest.raises(ValueError, match="NaN"):
        rvq.encode(torch.full((1, 8, 3), float("nan")))


def test_latent_codec_encodes_and_decodes_audio():
    vae = build_autoencoder_lite(AUTOENCODER_TINY_CONFIG).eval()
    wav = torch.randn(2, 1, 1024 * 8) * 0.1
    with torch.no_grad():
        z = vae.encode(wav).latent_dist.mode()
    c = latent_channels(vae)  # 4 encoder channels x 4 frames per latent frame
    codec = LatentCodec(vae, ResidualVQ.fit(z.transpose(1, 2).reshape(-1, c), codebooks=2, size=4, iters=3))
    codes = codec.encode(wav)
    assert codes.shape == (2, 2, 8)
    assert codec.decode(codes).shape == (2, 1, 8 * 1024)
    assert codec.frame_rate == pytest.approx(22050 / 1024) and codec.bitrate == pytest.approx(22050 / 1024 * 2 * 2)
    assert (codec.num_codebooks, codec.codebook_size, codec.weights_sha256) == (2, 4, None)
    rows = codec_reconstruction(codec, wav[0])
    assert [r["stage"] for r in rows] == ["autoencoder", "1 codebook", "2 codebooks"]
    assert rows[1]["bitrate"] == pytest.approx(codec.frame_rate * 2) and rows[0]["bitrate"] is None
    assert rows[1]["latent_rel_err"] >= rows[2]["latent_rel_err"]
    assert all(isinstance(r["chroma"], float) for r in rows)  # the notes kept, per stage: defined for this input
    cached = codec_reconstruction(codec, wav[0], latents=z[0])  # the same latents, given: the same rows
    assert [r["mrstft"] for r in cached] == pytest.approx([r["mrstft"] for r in rows])
    with pytest.raises(ValueError, match="samples"):
        codec.encode(torch.zeros(2, 1024))
    with pytest.raises(ValueError, match="fit the RVQ"):
        LatentCodec(vae, ResidualVQ(2, 4, c // 4))  # the encoder's channels, ungrouped: not the latents


def test_codec_checkpoint_round_trips_and_refuses_another_autoencoder(tmp_path):
    from accelerando.models.autoencoder_lite import save_autoencoder_lite
    from accelerando.models.codec_lite import load_codec_lite, save_codec_lite
    from accelerando.checkpoint import file_sha256

    vae = build_autoencoder_lite(AUTOENCODER_TINY_CONFIG).eval()
    save_autoencoder_lite(vae, tmp_path / "ae")
    rvq = ResidualVQ.fit(torch.randn(200, latent_channels(vae)), codebooks=2, size=8, iters=2)
    save_codec_lite(rvq, tmp_path / "codec", vae_path=tmp_path / "ae")
    codec = load_codec_lite(tmp_path / "codec", vae_path=tmp_path / "ae")
    assert torch.allclose(codec.rvq.codebooks, rvq.codebooks.half().float())
    assert codec.weights_sha256 == file_sha256(tmp_path / "codec" / "codec_lite.safetensors")
    save_autoencoder_lite(build_autoencoder_lite(AUTOENCODER_TINY_CONFIG, seed=1), tmp_path / "other")
    with pytest.raises(ValueError, match="another autoencoder"):
        load_codec_lite(tmp_path / "codec", vae_path=tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="accelerando.train.codec"):
        load_codec_lite(tmp_path / "missing", vae_path=tmp_path / "ae")

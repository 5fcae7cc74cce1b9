"""Stable-Audio-Lite autoencoder: shapes, checkpoint round trip and errors, a few training steps.

Everything runs on AUTOENCODER_TINY_CONFIG (same strides and frame group as the Lite config),
except a meta-device parameter count of the Lite config itself.
"""

import json

import numpy as np
import pytest
import torch

from accelerando.models.autoencoder_lite import (
    AUTOENCODER_LITE_CONFIG,
    AUTOENCODER_TINY_CONFIG,
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_autoencoder_lite,
    hop_length,
    latent_frames,
    load_autoencoder_lite,
    save_autoencoder_lite,
)
from accelerando.models.latent_grouping import group_frames, latent_channels
from accelerando.train.autoencoder import (AutoencoderTrainingConfig, bake_balanced_upsamplers, balance_polyphase, balance_upsamplers,
                                           complex_loss, loss_terms, mel_loss, mrstft_loss, random_crops, train)

TINY = AUTOENCODER_TINY_CONFIG


def test_lite_config_geometry_and_size():
    vae = build_autoencoder_lite(device="meta")
    assert hop_length() == 1024 and AUTOENCODER_LITE_CONFIG["sampling_rate"] / hop_length() == pytest.approx(21.53, abs=0.01)
    assert vae.hop_length == 1024 and latent_channels(vae) == 64  # Stable Audio Open's latent shape
    assert vae.config.audio_channels == 1 and vae.config.decoder_input_channels == 16
    assert 1.5e6 < sum(p.numel() for p in vae.parameters()) < 4e6


@pytest.mark.parametrize("frames", [1, 3, 16])
def test_encode_decode_shapes(frames):
    vae = build_autoencoder_lite(TINY)
    samples = frames * 1024
    with torch.no_grad():
        posterior = vae.encode(torch.randn(2, 1, samples)).latent_dist
        z = posterior.mode()
        assert z.shape == (2, latent_channels(vae), frames) == posterior.sample().shape
        assert latent_channels(vae) == TINY["decoder_input_channels"] * TINY["latent_frame_group"]
        assert latent_frames(samples, TINY) == frames
        assert vae.decode(z).sample.shape == (2, 1, samples)
    # a ragged tail is dropped, as latent_frames says
    assert vae.encode(torch.randn(1, 1, samples + 1000)).latent_dist.mode().shape[-1] == latent_frames(samples + 1000, TINY) == frames
    with pytest.raises(ValueError, match="one hop"):
        latent_frames(1023, TINY)


def test_build_is_seeded_and_leaves_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build_autoencoder_lite(TINY, seed=1), build_autoencoder_lite(TINY, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="2 x decoder_input_channels"):
        build_autoencoder_lite({**TINY, "encoder_hidden_size": 6})


def test_save_load_round_trip(tmp_path):
    vae = build_autoencoder_lite(TINY, seed=3).eval()
    save_autoencoder_lite(vae, tmp_path / "ck", extra={"trained": {"steps": 7}})
    loaded = load_autoencoder_lite(tmp_path / "ck", expect_config=TINY)
    meta = json.loads((tmp_path / "ck" / CONFIG_FILE).read_text())
    assert meta["trained"]["steps"] == 7 and meta["config"]["audio_channels"] == 1
    ref, got = vae.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:  # weights are stored in fp16: exact after rounding ref to fp16
        assert torch.equal(ref[k].half().float(), got[k]), k
    x = torch.randn(1, 1, 4 * 1024)
    with torch.no_grad():
        y_ref = vae.decode(vae.encode(x).latent_dist.mode()).sample
        y_got = loaded.decode(loaded.encode(x).latent_dist.mode()).sample
    assert torch.allclose(y_ref, y_got, rtol=1e-2, atol=1e-3 * y_ref.abs().max())
    assert load_autoencoder_lite(tmp_path / "ck", dtype=torch.float16, expect_config=TINY).dtype == torch.float16


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="accelerando.train.autoencoder"):
        load_autoencoder_lite(tmp_path / "nowhere")
    ck = save_autoencoder_lite(build_autoencoder_lite(TINY), tmp_path / "ck")
    # another architecture than expected (default: the Lite config)
    with pytest.raises(ValueError, match="another architecture.*expect_config=None"):
        load_autoencoder_lite(ck)
    # weights that do not fit the config
    other = save_autoencoder_lite(build_autoencoder_lite({**TINY, "decoder_channels": 8}), tmp_path / "other")
    (ck / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="does not match its config.json"):
        load_autoencoder_lite(ck, expect_config=TINY)
    (ck / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks {WEIGHTS_FILE}.*Train one"):
        load_autoencoder_lite(ck, expect_config=TINY)
    (other / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not an autoencoder-lite config"):
        load_autoencoder_lite(other, expect_config=TINY)


def test_mrstft_loss_zero_on_identity_and_positive_otherwise():
    x = torch.randn(2, 1, 8192)
    assert mrstft_loss(x, x, (512, 128)).item() == pytest.approx(0.0, abs=1e-6)
    assert mrstft_loss(x, 0.5 * x, (512, 128)).item() > 0.1


def test_random_crops_skip_silence():
    rng = np.random.default_rng(0)
    clips = [np.zeros(20000, np.float32), np.random.default_rng(1).standard_normal(20000).astype(np.float32)]
    batch = random_crops(clips, 8, 4096, rng, min_rms=1e-3)
    assert batch.shape == (8, 1, 4096) and (batch.pow(2).mean(-1).sqrt() > 1e-3).all()


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = AutoencoderTrainingConfig(stft_windows=(512, 128, 32))
    vae = build_autoencoder_lite(TINY, seed=0).train()
    t = torch.arange(2 * 8192) / 22050
    x = (0.3 * torch.sin(2 * torch.pi * 440 * t) * torch.sin(2 * torch.pi * 3 * t)).reshape(2, 1, 8192)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3, betas=cfg.betas)
    losses = []
    for _ in range(30):
        terms = loss_terms(vae, x, cfg)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_alternative_losses_zero_on_identity_and_the_complex_one_sees_phase():
    t = torch.arange(2 * 8192) / 22050
    x = (0.3 * torch.sin(2 * torch.pi * 440 * t)).reshape(2, 1, 8192)
    flipped = -x  # same magnitude spectrum, every phase off by pi
    assert mel_loss(x, x, 22050).item() == pytest.approx(0.0, abs=1e-6)
    assert complex_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert mel_loss(x, 0.5 * x, 22050).item() > 0.1
    assert mrstft_loss(x, flipped, (512, 128)).item() == pytest.approx(0.0, abs=1e-5)
    assert complex_loss(x, flipped).item() > 0.1


def test_loss_options_add_their_terms_and_unknown_ones_are_refused():
    vae = build_autoencoder_lite(TINY, seed=0).train()
    x = 0.1 * torch.randn(2, 1, 8192)
    terms = loss_terms(vae, x, AutoencoderTrainingConfig(recon_loss="mel", complex_weight=0.5))
    assert {"stft", "l1", "kl", "complex", "loss"} <= set(terms) and torch.isfinite(terms["loss"])
    assert "complex" not in loss_terms(vae, x, AutoencoderTrainingConfig())
    with pytest.raises(ValueError, match="recon_loss='magnitude'.*'mrstft'"):
        AutoencoderTrainingConfig(recon_loss="magnitude")
    with pytest.raises(ValueError, match="complex_weight"):
        AutoencoderTrainingConfig(complex_weight=-1.0)


def test_balanced_upsamplers_turn_a_constant_latent_into_a_constant_output(tmp_path):
    vae = build_autoencoder_lite(TINY, seed=0).eval()
    g = TINY["latent_frame_group"]  # a latent constant over the decoder's own frames, grouped as the model groups
    z = torch.randn(1, TINY["decoder_input_channels"], 1, generator=torch.Generator().manual_seed(0)).repeat(1, 1, 48 * g)
    z = group_frames(z, g)
    middle = slice(20 * hop_length(TINY), 28 * hop_length(TINY))  # away from the zero padding at the ends

    def periodic_part(model):
        with torch.no_grad():
            y = model.decode(z).sample[0, 0, middle]
        return float((y - y.mean()).abs().max()), y

    plain, _ = periodic_part(vae)
    assert plain > 1e-3  # the stock upsamplers turn the constant into a pattern repeating every hop
    handles = balance_upsamplers(vae)
    balanced, y_hooked = periodic_part(vae)
    assert balanced < 1e-4 * plain

    bake_balanced_upsamplers(vae)
    for handle in handles:
        handle.remove()
    assert torch.allclose(periodic_part(vae)[1], y_hooked, atol=1e-5)  # the weights now hold the projection
    save_autoencoder_lite(vae, tmp_path / "ae")
    plain_again = load_autoencoder_lite(tmp_path / "ae", expect_config=TINY).eval()  # no hooks
    assert periodic_part(plain_again)[0] < 1e-2 * plain  # fp16 storage rounds the balance, barely

    w = torch.randn(3, 2, 8)
    b = balance_polyphase(w, 4)
    sums = b[..., :4] + b[..., 4:]
    assert torch.allclose(sums, sums[..., :1].expand_as(sums), atol=1e-6)
    assert torch.allclose(balance_polyphase(b, 4), b, atol=1e-6)  # a projection
    with pytest.raises(ValueError, match="kernel = 2 x stride"):
        balance_polyphase(torch.randn(3, 2, 6), 4)


def test_training_with_balanced_upsamplers_from_a_checkpoint(tmp_path):
    from accelerando.data import build_corpus, preset

    corpus = build_corpus(preset("tiny", sample_rate=22050))
    save_autoencoder_lite(build_autoencoder_lite(TINY, seed=3), tmp_path / "start")
    cfg = AutoencoderTrainingConfig(model="tiny", out=str(tmp_path / "out"), max_steps=2, batch_size=1, crop_samples=4096,
                      val_clips=1, val_seconds=2.0, balanced_upsamplers=True, init_from=str(tmp_path / "start"))
    log = train(cfg, corpus=corpus)
    assert log["throughput"]["steps"] == 2 and log["settings"]["init_from"] == str(tmp_path / "start")
    vae = load_autoencoder_lite(tmp_path / "out", expect_config=TINY)
    for block in vae.decoder.block:
        if hasattr(block, "conv_t1"):
            conv, s = block.conv_t1, block.conv_t1.stride[0]
            w = conv.weight_g * conv.weight_v / conv.weight_v.norm(dim=(1, 2), keepdim=True)  # as loaded
            sums = w[..., :s] + w[..., s:]
            assert torch.allclose(sums, sums.mean(-1, keepdim=True), atol=2e-3 * float(sums.abs().max()))


def test_trainer_model_choices_name_their_configs():
    from accelerando.models.autoencoder_lite import hop_length
    from accelerando.train.autoencoder import MODEL_CONFIGS

    # both give 21.5 latent frames/s: hop 256 x 4 frames per latent frame, and hop 1024 ungrouped
    assert hop_length(MODEL_CONFIGS["lite"]) == hop_length(MODEL_CONFIGS["lite-hop1024"]) == 1024
    assert MODEL_CONFIGS["lite"]["latent_frame_group"] == 4 and MODEL_CONFIGS["lite-hop1024"]["latent_frame_group"] == 1
    with pytest.raises(ValueError, match="lite-hop1024"):
        AutoencoderTrainingConfig(model="hop256")


def test_a_stock_checkpoint_loads_as_group_one_and_the_kl_counts_encoder_frames(tmp_path):
    """A checkpoint of diffusers' own class (no grouping) loads with its layout; grouping the same
    weights changes the latent layout, not the KL per encoder frame the trainer weighs."""
    stock_config = {**TINY, "latent_frame_group": 1}
    stock = build_autoencoder_lite(stock_config, seed=2).eval()
    ck = save_autoencoder_lite(stock, tmp_path / "stock")
    meta = json.loads((ck / CONFIG_FILE).read_text())
    meta["class"] = "AutoencoderOobleck"
    del meta["config"]["latent_frame_group"]  # as diffusers' AutoencoderOobleck writes it
    (ck / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = load_autoencoder_lite(ck, expect_config=None)
    assert loaded.config.latent_frame_group == 1 and latent_channels(loaded) == TINY["decoder_input_channels"]
    with pytest.raises(ValueError, match="latent_frame_group"):
        load_autoencoder_lite(ck, expect_config=TINY)
    grouped = build_autoencoder_lite(TINY, seed=2).eval()
    x = torch.randn(2, 1, 8 * 1024, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    kl_stock = loss_terms(stock, x, AutoencoderTrainingConfig(stft_windows=(128,)))["kl"]
    torch.manual_seed(0)
    kl_grouped = loss_terms(grouped, x, AutoencoderTrainingConfig(stft_windows=(128,)))["kl"]
    assert torch.allclose(kl_stock, kl_grouped, rtol=1e-4)


def test_command_line_booleans_and_none_defaults_parse_as_their_types():
    from accelerando.train import config_from_argv

    cfg = config_from_argv(AutoencoderTrainingConfig, ["--balanced_upsamplers", "False", "--max_steps", "3"], "")
    assert cfg.balanced_upsamplers is False and cfg.max_steps == 3
    assert config_from_argv(AutoencoderTrainingConfig, ["--balanced_upsamplers", "true"], "").balanced_upsamplers is True
    assert config_from_argv(AutoencoderTrainingConfig, [], "").balanced_upsamplers is True  # the default
    with pytest.raises(SystemExit):
        config_from_argv(AutoencoderTrainingConfig, ["--balanced_upsamplers", "maybe"], "")

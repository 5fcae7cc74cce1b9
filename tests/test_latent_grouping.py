"""accelerando.models.latent_grouping: stacking encoder frames into latent frames, exactly."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderOobleck

from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG
from accelerando.models.latent_grouping import (
    AutoencoderOobleckLite,
    group_frames,
    latent_channels,
    latent_frame_group,
    latent_hop,
    ungroup_frames,
)

STOCK = {k: v for k, v in AUTOENCODER_TINY_CONFIG.items() if k != "latent_frame_group"}  # diffusers' own kwargs


def test_group_and_ungroup_are_inverse_and_lay_channels_out_by_offset():
    h = torch.arange(2 * 3 * 9, dtype=torch.float32).reshape(2, 3, 9)
    z = group_frames(h, 4)
    assert z.shape == (2, 12, 2)  # the ninth frame, past the last whole group, is dropped
    for c in range(3):
        for k in range(4):
            assert torch.equal(z[:, c * 4 + k], h[:, c, k:8:4])  # channel c at offset k of each group
    assert torch.equal(ungroup_frames(z, 4), h[..., :8])
    assert torch.equal(group_frames(h, 1), h)
    with pytest.raises(ValueError, match="groups of 5"):
        ungroup_frames(z, 5)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    stock = AutoencoderOobleck(**STOCK).eval()
    grouped = AutoencoderOobleckLite(**STOCK, latent_frame_group=4).eval()
    grouped.load_state_dict(stock.state_dict())  # the same weights: only the layout differs
    return stock, grouped


def test_grouped_latents_are_the_stock_latents_regrouped_and_decode_identically(pair):
    stock, grouped = pair
    hop = latent_hop(stock)
    wav = torch.randn(2, 1, hop * 4 * 3)
    with torch.no_grad():
        plain = stock.encode(wav).latent_dist
        mine = grouped.encode(wav).latent_dist
        assert mine.mean.shape == (2, latent_channels(grouped), 3)
        assert torch.equal(mine.mean, group_frames(plain.mean, 4))
        assert torch.allclose(mine.std, group_frames(plain.std, 4), rtol=1e-6, atol=0)  # scales: their own half
        z = mine.mode()
        assert torch.equal(grouped.decode(z).sample, stock.decode(ungroup_frames(z, 4)).sample)
    assert latent_hop(grouped) == 4 * hop == grouped.hop_length  # what StableAudioPipeline sizes audio by
    assert latent_frame_group(grouped) == 4 and latent_frame_group(stock) == 1
    assert latent_channels(stock) == STOCK["decoder_input_channels"]


def test_a_group_of_one_is_the_stock_model_and_the_config_round_trips(pair):
    stock, _ = pair
    one = AutoencoderOobleckLite(**STOCK).eval()
    one.load_state_dict(stock.state_dict())
    wav = torch.randn(1, 1, latent_hop(stock) * 2)
    with torch.no_grad():
        assert torch.equal(one.encode(wav).latent_dist.mean, stock.encode(wav).latent_dist.mean)
    again = AutoencoderOobleckLite.from_config(AutoencoderOobleckLite(**STOCK, latent_frame_group=2).config)
    assert latent_frame_group(again) == 2


def test_bad_groups_and_short_audio_name_the_fix(pair):
    _, grouped = pair
    with pytest.raises(ValueError, match="latent_frame_group=0"):
        AutoencoderOobleckLite(**STOCK, latent_frame_group=0)
    with pytest.raises(ValueError, match="pass longer audio"):
        grouped.encode(torch.randn(1, 1, latent_hop(grouped) // 2))

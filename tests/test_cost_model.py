"""The cost model counts what torch counts and what the patch-parallel processors send."""

import pytest
import torch

from accelerando.bench.measure import count_flops
from accelerando.distributed import (PUBLISHED_DEVICES, PUBLISHED_LINKS, Device, Link, dit_step_flops, exchanged_bytes,
                                     patch_parallel_cost)
from accelerando.models.stable_audio import TRANSFORMER_CONFIGS


def _meta_step_flops(config: dict, frames: int, batch: int = 2, text_tokens: int = 64) -> int:
    from diffusers import StableAudioDiTModel
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    with torch.device("meta"):
        model = StableAudioDiTModel(**config)
        hidden = torch.empty(batch, config["in_channels"], frames)
        text = torch.empty(batch, text_tokens, config["cross_attention_input_dim"])
        global_states = torch.empty(batch, 1, config["global_states_input_dim"])
        t = torch.empty(1)
    rotary = tuple(x.to("meta") for x in get_1d_rotary_pos_embed(config["attention_head_dim"] // 2, frames + 1,
                                                                  use_real=True, repeat_interleave_real=False))
    return count_flops(lambda: model(hidden, t, encoder_hidden_states=text, global_hidden_states=global_states,
                                     rotary_embedding=rotary, return_dict=False))


@pytest.mark.parametrize("preset,frames", [("tiny", 32), ("full", 215), ("full", 1024)])
def test_step_flops_match_torchs_flop_counter(preset, frames):
    config = TRANSFORMER_CONFIGS[preset]
    counted = _meta_step_flops(config, frames)
    assert dit_step_flops(config, frames) == pytest.approx(counted, rel=1e-3)


def test_a_ranks_share_is_about_its_frames_share():
    config = TRANSFORMER_CONFIGS["full"]
    whole, half = dit_step_flops(config, 1024), dit_step_flops(config, 512, key_frames=1024)
    assert whole / 2 < half < whole / 2 * 1.01  # the text's keys and the conditioning run on every rank


def test_bytes_and_times_follow_the_split():
    config = TRANSFORMER_CONFIGS["full"]
    sizes = exchanged_bytes(config, 1024, 2)
    assert sizes["keys_values"] == 24 * 2 * 2 * 512 * 1536 * 4  # layers x (k, v) x batch x frames x width x fp32
    assert exchanged_bytes(config, 1025, 2)["keys_values"] > sizes["keys_values"]  # padded to the larger slice
    cpu = Device.calibrated("test CPU", dit_step_flops(config, 1024), 10.0)
    free = Link("free", float("inf"), 0.0, "test")
    ideal = patch_parallel_cost(config, 1024, 2, cpu, free, mode="exact")
    assert ideal.one_process_s == pytest.approx(10.0) and 1.95 < ideal.speedup < 2.0
    slow = Link("slow", 1e8, 1e-3, "test")
    exact = patch_parallel_cost(config, 1024, 2, cpu, slow, mode="exact")
    stale = patch_parallel_cost(config, 1024, 2, cpu, slow, mode="stale")
    assert stale.total_s < exact.total_s and exact.exchange_s > 0
    assert patch_parallel_cost(config, 1024, 1, cpu, slow).speedup == pytest.approx(1.0)


def test_published_numbers_say_so_and_bad_calibrations_are_refused():
    assert all(d.source.startswith("published peak") for d in PUBLISHED_DEVICES.values())
    assert all(link.source.startswith("published peak") for link in PUBLISHED_LINKS.values())
    with pytest.raises(ValueError, match="positive"):
        Device.calibrated("x", 1e9, 0.0)
    with pytest.raises(ValueError, match="mode="):
        patch_parallel_cost(TRANSFORMER_CONFIGS["tiny"], 32, 2, PUBLISHED_DEVICES["A100-SXM4-80GB"],
                            PUBLISHED_LINKS["NVLink3"], mode="fast")

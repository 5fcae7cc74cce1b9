"""Patch parallelism on two gloo ranks: the exact mode reproduces the single-process generation,
the stale mode uses the previous step's keys and values, and the patch comes off cleanly."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from accelerando.distributed import exchanged_bytes, frame_slices, measure_link, patch_parallel
from accelerando.models.control_adapter import MusicalControlAdapter, controls_applied
from accelerando.models.stable_audio import TRANSFORMER_CONFIGS, build_stable_audio
from accelerando.musical_controls import CONTROL_CHANNELS
from accelerando.quant import preset, quantize_

STEPS = 4


def _generate(pipe):
    out = pipe("a short test", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
               output_type="latent")
    return out.audios


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same random weights on every rank
        pipe = build_stable_audio("tiny", device="cpu")
        before = dict(pipe.transformer.attn_processors)
        results = {"single": _generate(pipe)}
        for mode in ("exact", "stale"):
            with patch_parallel(pipe.transformer, mode=mode, warmup_steps=1) as run:
                results[mode] = _generate(pipe)
                results[mode + "_again"] = _generate(pipe)  # a second generation resets the stale state
            results[mode + "_counts"] = (run.exact_exchanges, run.stale_exchanges, run.bytes_received)
        # a pre-hook another patch puts on the transformer after this one (the musical-control
        # adapter adds a residual per frame) still sees the whole latent: rank 1 gets its own frames' controls
        adapter = MusicalControlAdapter(out_channels=pipe.transformer.config.in_channels)
        torch.nn.init.normal_(adapter.net[-1].weight, std=0.5)
        features = torch.randn(1, CONTROL_CHANNELS, pipe.transformer.config.sample_size)
        with controls_applied(pipe.transformer, adapter, features):
            results["controls_single"] = _generate(pipe)
        with patch_parallel(pipe.transformer, mode="exact"), controls_applied(pipe.transformer, adapter, features):
            results["controls_exact"] = _generate(pipe)
        # it composes with quantization: per-token activation codes see the same tokens either way
        quantize_(pipe.transformer, preset("rtn", 8, 8, group_size=16))
        results["quantized_single"] = _generate(pipe)
        with patch_parallel(pipe.transformer, mode="exact"):
            results["quantized_exact"] = _generate(pipe)
        link = measure_link(sizes=(2**14, 2**22), rounds=3)
        results["link"] = (link.bytes_per_s, link.latency_s)
        after = dict(pipe.transformer.attn_processors)
        results["restored"] = all(after[k] is before[k] for k in before)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("patch_parallel")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_exact_mode_reproduces_the_single_process_generation(two_ranks):
    for res in two_ranks:
        assert (res["exact"] - res["single"]).abs().max() < 1e-5
        assert torch.equal(res["exact"], res["exact_again"])
        exact, stale, received = res["exact_counts"]
        assert stale == 0 and exact > 0
        # two generations of STEPS steps, each all-gathering what the cost model counts (batch 2: guidance)
        assert received == 2 * STEPS * exchanged_bytes(TRANSFORMER_CONFIGS["tiny"], 32, 2)["keys_values"]
        assert res["link"][0] > 0 and res["link"][1] >= 0
        assert res["restored"]
    assert torch.equal(two_ranks[0]["exact"], two_ranks[1]["exact"])  # every rank holds the whole latent


def test_exact_mode_composes_with_a_control_adapter_hooked_after_it(two_ranks):
    for res in two_ranks:
        assert (res["controls_single"] - res["single"]).abs().max() > 1e-2  # the controls matter ...
        assert (res["controls_exact"] - res["controls_single"]).abs().max() < 1e-4  # ... on every rank's frames (float rounding)


def test_exact_mode_composes_with_quantization(two_ranks):
    # a float-rounding difference can flip an activation code, so not 1e-5: far below what the codes change
    for res in two_ranks:
        quantization = (res["quantized_single"] - res["single"]).abs().mean()
        assert quantization > 0
        assert (res["quantized_exact"] - res["quantized_single"]).abs().mean() < 0.05 * quantization


def test_stale_mode_uses_the_previous_steps_keys_and_values(two_ranks):
    for res in two_ranks:
        exact, stale, _ = res["stale_counts"]
        assert stale > 0 and exact > 0  # warm-up steps exact, the rest stale
        assert torch.isfinite(res["stale"]).all()
        assert not torch.equal(res["stale"], res["exact"])  # stale keys change the result ...
        assert torch.equal(res["stale"], res["stale_again"])  # ... the same way in every generation
    assert torch.equal(two_ranks[0]["stale"], two_ranks[1]["stale"])


def test_frame_slices_cover_the_track_in_order():
    assert frame_slices(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert frame_slices(1024, 2) == [(0, 512), (512, 1024)]
    with pytest.raises(ValueError, match="cannot be split"):
        frame_slices(1, 2)


def test_patch_parallel_needs_an_initialised_process_group():
    pipe = build_stable_audio("tiny", device="cpu")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="torchrun"):
        with patch_parallel(pipe.transformer):
            pass
    with pytest.raises(ValueError, match="mode="):
        with patch_parallel(pipe.transformer, mode="fast"):
            pass

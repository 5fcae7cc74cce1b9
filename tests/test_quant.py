"""accelerando.quant: the integer math, SVDQuantLinear, quantize_ on real model classes, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from accelerando.quant import (
    PRESETS,
    SVDQuantConfig,
    SVDQuantLinear,
    allocate_ranks,
    load_quantized,
    lowrank_refit,
    preset,
    quantize_,
    save_quantized,
)
from accelerando.quant.primitives import (
    dequantize_groups,
    fake_quantize,
    group_scales,
    pack_int4,
    quantize_groups,
    quantized_matmul,
    unpack_int4,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum() / (b**2).sum())


# --- primitives -------------------------------------------------------------------------------


def test_int4_pack_unpack_round_trip():
    g = torch.Generator().manual_seed(0)
    signed = torch.randint(-8, 8, (5, 64), generator=g, dtype=torch.int8)
    unsigned = torch.randint(0, 16, (5, 64), generator=g, dtype=torch.int8)
    packed = pack_int4(signed)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 32)
    assert torch.equal(unpack_int4(packed), signed)
    assert torch.equal(unpack_int4(pack_int4(unsigned), signed=False).to(torch.int8), unsigned)
    # element 2k in the low nibble: the layout the kernels read
    assert pack_int4(torch.tensor([[-1, 2]], dtype=torch.int8)).item() == 0x2F
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))


@pytest.mark.parametrize("bits,signed", [(4, True), (4, False), (8, True)])
def test_group_quantization_error_is_bounded_by_half_a_step(bits, signed):
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(1)) * torch.logspace(-2, 2, 128)
    if not signed:
        x = x.abs()
    q, scale = quantize_groups(x, bits, 64, signed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    assert int(q.min()) >= lo and int(q.max()) <= hi
    err = (dequantize_groups(q, scale, 64) - x).reshape(6, 2, 64).abs()
    assert (err <= scale[..., None] / 2 + 1e-6).all()
    # the largest value of each group is representable exactly (scale = absmax / qmax)
    top = dequantize_groups(q, scale, 64).abs().reshape(6, 2, 64).amax(-1)
    assert torch.allclose(top, x.abs().reshape(6, 2, 64).amax(-1), rtol=1e-6)


def test_zero_groups_and_bad_shapes():
    x = torch.zeros(2, 64)
    q, scale = quantize_groups(x, 4, 64)
    assert torch.equal(scale, torch.ones(2, 1)) and not q.any()
    assert torch.equal(fake_quantize(x, 4, 64), x)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_scales(torch.zeros(2, 48), 4, 64)


def test_integer_gemm_equals_dequantized_product():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(9, 128, generator=g), torch.randn(16, 128, generator=g)
    qx, sx = quantize_groups(x, 4, 64)
    qw, sw = quantize_groups(w, 4, 64)
    y = quantized_matmul(qx, sx, qw, sw, 64)
    ref = dequantize_groups(qx, sx, 64) @ dequantize_groups(qw, sw, 64).t()
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)


# --- the layer --------------------------------------------------------------------------------


def test_lowrank_refit_never_increases_the_error():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(96, 128, generator=g)
    w[:, 5] *= 25  # an outlier input channel, as smoothing leaves in W
    up, down, errors = lowrank_refit(w, 16, 4, 64, iters=6)
    final = float((w - up @ down - fake_quantize(w - up @ down, 4, 64)).norm())
    assert final == pytest.approx(min(errors), rel=1e-5)
    assert min(errors) <= errors[0]
    plain = float((w - fake_quantize(w, 4, 64)).norm())
    assert final < plain  # the branch took the outlier out of the quantized residual


def test_compact_storage_rounds_scales_and_factors_within_their_precision():
    from accelerando.quant.primitives import decode_factor, decode_scales, encode_factor, encode_scales

    g = torch.Generator().manual_seed(4)
    scale = torch.rand(6, 8, generator=g) * 0.05 + 1e-4
    scale[2, :3] = 1e-9  # far below the e4m3 range under this tensor's scale
    codes, tensor = encode_scales(scale, "fp8")
    assert codes.dtype == torch.float8_e4m3fn and tensor.dtype == torch.float32 and tensor.dim() == 0
    assert 224 < float(codes.float().max()) <= 448 and math.log2(float(tensor)).is_integer()
    back = decode_scales(codes, tensor)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 in its normal range (codes >= 2^-6)
    normal = scale / tensor >= 2**-6
    assert normal.sum() > 40 and ((back - scale).abs() <= scale * 2**-4)[normal].all()
    assert (back > 0).all()  # a scale never rounds to zero
    assert torch.equal(decode_scales(*encode_scales(scale, "fp16")), scale.half().float())
    f = torch.randn(5, 40, generator=g) * torch.linspace(4, 0.1, 40)  # columns of decreasing size
    f[:, 3] = 0.0
    q, fs = encode_factor(f, 8, dim=0)  # one scale per column (a rank component of lora_up [out, r])
    assert q.dtype == torch.int8 and fs.dtype == torch.float16 and fs.shape == (40,) and q.abs().max() <= 127
    err = (decode_factor(q, fs, 0) - f).abs()
    assert (err <= fs.float()[None, :] / 2 + 1e-7).all() and err[:, 3].max() == 0
    assert err[:, -1].max() < err[:, 0].max() / 10  # small components keep their own resolution
    with pytest.raises(ValueError, match="scale format"):
        encode_scales(scale, "fp4")
    with pytest.raises(ValueError, match="low-rank bits"):
        encode_factor(f, 4, 0)


def test_compact_storage_layer_stores_fewer_bytes_and_stays_close_to_fp16_storage():
    torch.manual_seed(6)
    linear = nn.Linear(256, 192)
    with torch.no_grad():
        linear.weight[:, 7] *= 20  # an outlier column for the branch to take
    x = torch.randn(64, 256)
    with torch.no_grad():
        ref = linear(x)
    plain = SVDQuantLinear.from_linear(linear, 4, 4, 64, rank=16)
    compact = SVDQuantLinear.from_linear(linear, 4, 4, 64, rank=16, scale_format="fp8", lowrank_bits=8)
    assert compact.wscales.dtype == torch.float8_e4m3fn and compact.lora_up.dtype == torch.int8
    # fp8 scales: one byte per group instead of two, plus one fp32 scale; int8 factors: one byte
    # per entry instead of two, plus an fp16 scale per rank component of each factor
    saved = 192 * 4 - 4 + 16 * (256 + 192) - 2 * (16 + 16)
    assert plain.weight_bytes() - compact.weight_bytes() == saved
    # the codes are those of the residual under the scales as stored (not the unrounded ones)
    up, down = compact.lowrank_factors()
    residual = linear.weight.detach() - up @ down
    assert torch.equal(compact.weight_codes(), quantize_groups(residual, 4, 64, scale=compact.weight_scales())[0])
    unrounded = group_scales(residual, 4, 64)
    assert not torch.equal(compact.weight_codes(), quantize_groups(residual, 4, 64, scale=unrounded)[0])
    e_plain, e_compact = _rel(plain(x), ref), _rel(compact(x), ref)
    assert e_compact < 1.25 * e_plain  # compact storage costs little against the 4-bit rounding itself
    assert not torch.equal(compact(x), plain(x))  # and it is another layer, not the same one relabelled
    with pytest.raises(ValueError, match="scale_format"):
        SVDQuantConfig(scale_format="fp4")
    with pytest.raises(ValueError, match="lowrank_bits"):
        SVDQuantConfig(lowrank_bits=4)
    assert SVDQuantConfig(scale_format="fp8", lowrank_bits=8).name == "W4A4 r32 smooth=search scales=fp8 branch=int8"
    empty = SVDQuantLinear.from_linear(linear, 4, 4, 64, rank=0, lowrank_bits=8)  # no branch: nothing to scale
    assert empty.weight_bytes() == SVDQuantLinear.from_linear(linear, 4, 4, 64, rank=0).weight_bytes()


def test_clipping_saturates_the_largest_weights_and_refuses_bad_fractions():
    x = torch.tensor([[0.1, -0.2, 0.3, -4.0]])
    full = fake_quantize(x, 4, 4, clip=1.0)
    step = 4.0 / 7  # absmax / qmax: clip 1.0 is plain round-to-nearest
    assert torch.allclose(full, torch.round(x / step).clamp(-8, 7) * step)
    clipped = fake_quantize(x, 4, 4, clip=0.5)
    assert clipped[0, 3] == pytest.approx(-2.0 * 8 / 7)  # saturates at qmin x (0.5 absmax / 7)
    assert (clipped[0, :3] - x[0, :3]).abs().max() < (full[0, :3] - x[0, :3]).abs().max()  # finer step below
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            group_scales(x, 4, 4, clip=bad)
    with pytest.raises(ValueError, match="clip_grid"):
        SVDQuantConfig(clip_grid=(1.0, 0.0))


def test_the_clipping_search_picks_by_layer_error_and_never_does_worse_than_none():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    with torch.no_grad():  # heavy-tailed weights: saturating a few buys a finer step for the rest
        linear.weight.copy_(torch.distributions.StudentT(2.0).sample(linear.weight.shape) * 0.02)
    x = torch.randn(256, 128)
    errors = {}
    for grid in [(1.0,), (1.0, 0.9, 0.8, 0.7)]:
        model = nn.Sequential(_copy(linear))
        config = SVDQuantConfig(rank=0, smoothing="off", clip_grid=grid, skip=())
        if len(grid) > 1:
            with pytest.raises(ValueError, match="pass calib="):
                quantize_(_copy(model), config)
        report = quantize_(model, config, calib=[x])
        row = report.table().iloc[0]
        errors[grid] = row["error"]
        assert row["weight_clip"] in grid
    assert errors[(1.0, 0.9, 0.8, 0.7)] < errors[(1.0,)]
    # the layer stores the clipped scales of the residual its own refit left
    layer = SVDQuantLinear.from_linear(linear, 4, 4, group_size=64, rank=4, refit_iters=2, weight_clip=0.8)
    residual = linear.weight.detach() - layer.lora_up.float() @ layer.lora_down.float()
    assert torch.equal(layer.wscales, group_scales(residual, 4, 64, clip=0.8).half())
    assert float((residual - layer.residual_weight()).norm()) == pytest.approx(min(layer.refit_errors), rel=1e-3)
    assert SVDQuantConfig(clip_grid=(1.0, 0.9, 0.9)).clip_grid == (1.0, 0.9)
    assert SVDQuantConfig(clip_grid=(1.0, 0.9)).name.endswith("clip=1/0.9") and "clip" not in SVDQuantConfig().name


def test_a_rank_above_the_layer_width_is_capped_at_the_width():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    layer = SVDQuantLinear.from_linear(linear, 4, 4, group_size=32, rank=128, refit_iters=1)
    assert layer.rank == 64 and layer.lora_down.shape == (64, 64) and layer.lora_up.shape == (96, 64)
    x = torch.randn(5, 64)
    # a full-rank branch holds the whole weight: only the fp16 rounding of the factors is left
    assert torch.allclose(layer(x.clone()), linear(x), atol=5e-2)
    assert SVDQuantLinear(64, 96, rank=128, group_size=32).lora_up.shape == (96, 64)  # skeletons agree


def test_weight_only_layer_applies_its_effective_weight_and_the_shift_is_exact():
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(128, 32)
    x = torch.nn.functional.gelu(torch.randn(20, 128, generator=g) * 3)
    smooth = torch.rand(128, generator=g) + 0.5
    layer = SVDQuantLinear.from_linear(lin, 4, None, 64, rank=8, smooth=smooth, act_shift=0.17, act_signed=False)
    eff = layer.effective_weight()
    assert torch.allclose(layer(x), x @ eff.t() + lin.bias.detach(), rtol=1e-4, atol=1e-5)
    assert _rel(eff, lin.weight.detach()) < 0.02  # 4-bit residual + rank-8 branch of a random weight


def test_unsigned_codes_are_used_after_gelu():
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(64, 128))
    model.add_module("act", nn.GELU())
    model.add_module("fc2", nn.Linear(128, 64))
    x = torch.randn(64, 64, generator=g) * 2
    report = quantize_(model, SVDQuantConfig(rank=8, skip=()), calib=[x])
    table = report.table().set_index("name")
    assert bool(table.loc["fc1", "act_signed"]) is True  # LayerNorm-like signed input
    assert bool(table.loc["fc2", "act_signed"]) is False and 0 < table.loc["fc2", "act_shift"] <= 0.2785


def test_svdquant_beats_its_ablations_on_outlier_activations():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(512, 256, generator=g)
    x[:, 3] *= 30
    x[:, 77] *= 20
    lin = nn.Linear(256, 128)
    ref = lin(x).detach()
    errors = {}
    for method in PRESETS:
        model = nn.Sequential()
        model.add_module("fc", nn.Linear(256, 128))
        model.fc.load_state_dict(lin.state_dict())
        quantize_(model, preset(method, skip=()), calib=[x[:256]])
        errors[method] = _rel(model(x).detach(), ref)  # scored on rows the calibration did not see too
    assert errors["svdquant"] < errors["smoothquant"] < errors["rtn"]
    assert errors["svdquant"] < errors["svd"] < errors["rtn"]


def test_allocate_ranks_spends_the_budget_where_the_error_falls_most():
    # layer 0 gains little from rank, layer 1 a lot; both cost the same per rank component
    errors = [{0: 1.0, 8: 0.95, 16: 0.9}, {0: 1.0, 8: 0.3, 16: 0.1}]
    assert allocate_ranks(errors, [10, 10], budget=8 * 10 * 2) == [0, 16]
    assert allocate_ranks(errors, [10, 10], budget=8 * 10) == [0, 8]
    assert allocate_ranks(errors, [10, 10], budget=0) == [0, 0]
    # equal drops, room for either upgrade: the narrower layer's, which spends less
    assert allocate_ranks([{0: 1.0, 8: 0.5}, {0: 1.0, 8: 0.5}], [20, 10], budget=160) == [0, 8]
    # a flat step before a drop is crossed (a curve no greedy upgrade-by-upgrade would climb)
    assert allocate_ranks([{0: 1.0, 8: 1.0, 16: 0.1}], [10], budget=160) == [16]
    # no parameter is spent where it lowers no error, whatever the budget left
    assert allocate_ranks([{0: 1.0, 8: 1.0}], [10], budget=1000) == [0]
    # the least summed error, where taking the best ratio first would strand the budget:
    # (4, 8, 32) beats (16, 16, 16) with 48 components to share
    curves = [{0: 0.02, 4: 0.0, 8: 0.0, 16: 0.0}, {0: 0.02, 4: 0.015, 8: 0.011, 16: 0.0076, 32: 0.0038},
              {0: 0.023, 4: 0.017, 8: 0.0137, 16: 0.0071, 32: 0.0031}]
    assert allocate_ranks(curves, [1, 1, 1], budget=48) == [4, 8, 32]
    # too fine a budget for the resolution: costs round up, the budget still holds
    coarse = allocate_ranks(curves, [7, 7, 7], budget=48 * 7, resolution=10)
    assert 7 * sum(coarse) <= 48 * 7
    # a grid without 0 whose lowest ranks no longer fit once rounded up: an error, not an overspend
    with pytest.raises(ValueError, match="resolution"):
        allocate_ranks([{16: 1.0, 32: 0.5}, {16: 1.0, 32: 0.5}], [6, 19], budget=400, resolution=2)
    with pytest.raises(ValueError, match="budget"):
        allocate_ranks([{8: 1.0}], [10], budget=10)
    with pytest.raises(ValueError, match="per layer"):
        allocate_ranks([{0: 1.0}], [10, 10], budget=10)


def test_knapsack_rank_allocation_keeps_the_budget_and_lowers_the_summed_layer_error(tmp_path):
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = nn.Sequential()
    for i in range(3):
        model.add_module(f"fc{i}", nn.Linear(128, 128))
    with torch.no_grad():  # one layer of low effective rank, one of spread spectrum, one in between
        model.fc0.weight.copy_(torch.randn(128, 4, generator=g) @ torch.randn(4, 128, generator=g) * 0.1
                               + torch.randn(128, 128, generator=g) * 1e-3)
        model.fc1.weight.copy_(torch.randn(128, 128, generator=g) * 0.05)
        model.fc2.weight.copy_(torch.distributions.StudentT(2.0).sample((128, 128)) * 0.02)
    x = torch.randn(256, 128, generator=g)
    uniform_model, knapsack_model = _copy(model), _copy(model)
    uniform = quantize_(uniform_model, SVDQuantConfig(rank=16, skip=()), calib=[x]).table()
    config = SVDQuantConfig(rank=16, rank_allocation="knapsack", rank_grid=(0, 4, 8, 16, 24, 32, 64), skip=())
    assert config.name.startswith("W4A4 r16 ranks=knapsack(0/4/8/16/24/32/64)")
    assert "ranks=knapsack smooth" in SVDQuantConfig(rank_allocation="knapsack").name
    knapsack = quantize_(knapsack_model, config, calib=[x]).table()
    assert (knapsack["rank"] * 256).sum() <= (uniform["rank"] * 256).sum()  # the uniform budget
    assert knapsack["error"].sum() <= uniform["error"].sum()
    assert set(knapsack["rank"]) != {16}  # the curves differ enough that the ranks differ
    inputs = [x, model.fc0(x), model.fc1(model.fc0(x))]  # each layer's calibration input
    for (_, row), layer_input in zip(knapsack.iterrows(), inputs):  # each row's error is that of the rank it got
        assert row["error"] == row["error_by_rank"][row["rank"]]
        layer, full = knapsack_model.get_submodule(row["name"]), model.get_submodule(row["name"])
        with torch.no_grad():
            assert layer.rank == row["rank"]
            assert _rel(layer(layer_input), full(layer_input)) == pytest.approx(row["error"], rel=1e-4)
    save_quantized(knapsack_model, tmp_path / "q")  # mixed ranks save and load
    fresh = load_quantized(_copy(model), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(fresh(x), knapsack_model(x))
    with pytest.raises(ValueError, match="rank_allocation='knapsack' needs activation statistics"):
        quantize_(_copy(model), SVDQuantConfig(smoothing="off", rank_allocation="knapsack", skip=()))
    with pytest.raises(ValueError, match="rank_allocation"):
        SVDQuantConfig(rank_allocation="best")
    with pytest.raises(ValueError, match="rank_grid"):
        SVDQuantConfig(rank_grid=(-1, 8))


# --- quantize_ on the real model classes ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dit():
    from diffusers import StableAudioDiTModel

    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG

    torch.manual_seed(0)
    return StableAudioDiTModel(**DIT_TINY_CONFIG).eval()


def _dit_inputs(dit, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = dit.config
    return dict(hidden_states=torch.randn(2, c.in_channels, 24, generator=g),
                timestep=torch.tensor([0.3, 0.7]),
                encoder_hidden_states=torch.randn(2, 5, c.cross_attention_input_dim, generator=g),
                global_hidden_states=torch.randn(2, 1, c.global_states_input_dim, generator=g),
                return_dict=False)


def _copy(module):
    import copy

    return copy.deepcopy(module)


def test_quantize_a_tiny_dit_end_to_end_and_report_skips(tiny_dit):
    dit = _copy(tiny_dit)
    with torch.no_grad():
        ref = tiny_dit(**_dit_inputs(tiny_dit))[0]
    calib = [_dit_inputs(tiny_dit, s) for s in range(3)]
    report = quantize_(dit, SVDQuantConfig(weight_bits=8, act_bits=8, group_size=16, rank=4), calib=calib)
    skipped = report.skipped
    assert any("proj_in" in n for n in skipped) and any("timestep_proj" in n for n in skipped)
    assert all("skip pattern" in r or "not a multiple" in r or "not an nn.Linear" in r for r in skipped.values())
    assert len(report.quantized) == 2 * 10  # two blocks x (4 self-attn + 4 cross-attn + 2 ff)
    assert all(isinstance(dict(dit.named_modules())[n], SVDQuantLinear) for n in report.quantized)
    with torch.no_grad():
        out = dit(**_dit_inputs(tiny_dit))[0]
    assert torch.isfinite(out).all() and _rel(out, ref) < 1e-3  # W8A8 is close
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(dit, SVDQuantConfig(group_size=16), calib=calib)


def test_groups_that_do_not_divide_are_skipped_not_broken(tiny_dit):
    dit = _copy(tiny_dit)
    report = quantize_(dit, SVDQuantConfig(group_size=32, rank=0, smoothing="off"))
    assert report.skipped["transformer_blocks.0.attn2.to_k"].startswith("in_features 16")
    assert isinstance(dit.transformer_blocks[0].attn2.to_k, nn.Linear)
    assert isinstance(dit.transformer_blocks[0].attn1.to_q, SVDQuantLinear)


@pytest.mark.parametrize("storage", [{}, {"scale_format": "fp8", "lowrank_bits": 8}])
def test_save_load_round_trip_is_identical_and_refuses_another_config(tmp_path, tiny_dit, storage):
    from diffusers import StableAudioDiTModel

    dit = _copy(tiny_dit)
    quantize_(dit, SVDQuantConfig(group_size=16, rank=4, smoothing=0.5, **storage), calib=[_dit_inputs(tiny_dit)])
    save_quantized(dit, tmp_path / "q")
    fresh = StableAudioDiTModel(**tiny_dit.config)  # other random weights: all replaced on load
    load_quantized(fresh, tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(fresh(**_dit_inputs(tiny_dit))[0], dit(**_dit_inputs(tiny_dit))[0])
    if not storage:  # a save from before the storage options (format 1) still loads, as fp16 storage
        meta = json.loads((tmp_path / "q" / "quantization.json").read_text())
        meta["format"] = 1
        for layer in meta["layers"].values():
            del layer["scale_format"], layer["lowrank_bits"]
        (tmp_path / "q" / "quantization.json").write_text(json.dumps(meta))
        older = load_quantized(StableAudioDiTModel(**tiny_dit.config), tmp_path / "q")
        with torch.no_grad():
            assert torch.equal(older(**_dit_inputs(tiny_dit))[0], dit(**_dit_inputs(tiny_dit))[0])
    other = StableAudioDiTModel(**{**tiny_dit.config, "num_layers": 1})
    with pytest.raises(ValueError, match="another config"):
        load_quantized(other, tmp_path / "q")
    with pytest.raises(FileNotFoundError, match="save_quantized"):
        load_quantized(fresh, tmp_path / "nothing")
    with pytest.raises(ValueError, match="quantize_"):
        save_quantized(tiny_dit, tmp_path / "plain")


def test_quantize_a_tiny_musicgen_decoder():
    from accelerando.models.musicgen import build_musicgen

    model = build_musicgen("tiny").eval()
    decoder = model.decoder
    ids = torch.randint(0, decoder.config.vocab_size, (2 * decoder.config.num_codebooks, 12),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = decoder(input_ids=ids).logits
    report = quantize_(decoder, SVDQuantConfig(weight_bits=8, act_bits=8, group_size=16, rank=4),
                       calib=lambda m: m(input_ids=ids))
    assert report.quantized and all("lm_heads" in n for n in report.skipped if "lm_head" in n)
    with torch.no_grad():
        out = decoder(input_ids=ids).logits
    assert torch.isfinite(out).all() and _rel(out, ref) < 1e-2


def test_int8_cpu_path_tracks_the_reference():
    g = torch.Generator().manual_seed(7)
    lin = nn.Linear(128, 64)
    x = torch.randn(40, 128, generator=g)
    layer = SVDQuantLinear.from_linear(lin, 8, 8, 64, rank=8)
    ref = layer(x)
    layer.backend = "int8-cpu"
    out = layer(x)
    assert _rel(out, ref) < 1e-3 and _rel(out, lin(x).detach()) < 1e-3


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="use 4 or 8"):
        SVDQuantConfig(weight_bits=3)
    with pytest.raises(ValueError, match="W8A8 only"):
        SVDQuantConfig(backend="int8-cpu")
    with pytest.raises(ValueError, match="unknown SVDQuantConfig fields"):
        SVDQuantConfig.from_dict({"rnak": 3})
    with pytest.raises(ValueError, match="unknown method"):
        preset("gptq")
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match="pass calib="):
        quantize_(model, SVDQuantConfig(skip=()))
    assert SVDQuantConfig.from_dict(SVDQuantConfig(rank=8).to_dict()) == SVDQuantConfig(rank=8)


def test_phase_coherent_objective_scores_candidates_on_decoded_audio():
    from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG, build_stable_audio_lite
    from accelerando.quant.objectives import pipeline_calibration, stft_distance

    pipe = build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG), sigma_data=0.7)
    calib, audio_fn = pipeline_calibration(pipe, ["a folk song", "a chorale"], steps=2, seconds=0.25)
    reference, sr = audio_fn()
    config = SVDQuantConfig(group_size=16, rank=2, alpha_grid=(0.3, 0.6), objective="stft_complex", audio_candidates=2)
    with pytest.raises(ValueError, match="audio_fn="):
        quantize_(_copy(pipe.transformer), config, calib=calib)
    report = quantize_(pipe.transformer, config, calib=calib, audio_fn=audio_fn)
    table = report.table()
    chosen = table[table.status == "quantized"]
    assert chosen.audio_error.notna().all() and (chosen.layer_rank_of_choice < 2).all()
    after, _ = audio_fn()
    assert 0 < stft_distance(reference, after, sr, "stft_complex") < float("inf")
    assert stft_distance(reference, reference, sr, "stft_magnitude") == 0.0


# --- the benchmark pieces ---------------------------------------------------------------------


def _stored_bytes(model: nn.Module) -> int:
    """Bytes of a quantized model as held: its quantized layers' buffers as stored, the rest fp16."""
    return sum(t.numel() * (2 if t.is_floating_point() and not isinstance(m, SVDQuantLinear) else t.element_size())
               for m in model.modules() for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))


@pytest.mark.parametrize("storage", [{}, {"scale_format": "fp8", "lowrank_bits": 8}])
def test_weight_bytes_from_skeletons_equal_the_quantized_model(tiny_dit, storage):
    from accelerando.bench.quant import quantized_weight_bytes

    config = SVDQuantConfig(group_size=16, rank=4, smoothing="off", **storage)
    predicted = quantized_weight_bytes(tiny_dit, config)
    dit = _copy(tiny_dit)
    quantize_(dit, config)
    assert predicted["quantized_bytes"] == _stored_bytes(dit)
    assert predicted["fp16_bytes"] == 2 * sum(p.numel() for p in tiny_dit.parameters())
    assert predicted["quantized_layers"] == 20 and predicted["ratio"] > 1
    # a rank per layer (as a knapsack allocation leaves them) counts each layer at its own rank
    calib = [_dit_inputs(tiny_dit)]
    mixed = SVDQuantConfig(group_size=16, rank=4, rank_allocation="knapsack", rank_grid=(0, 2, 8), **storage)
    dit = _copy(tiny_dit)
    report = quantize_(dit, mixed, calib=calib)
    assert len(set(report.ranks.values())) > 1
    assert quantized_weight_bytes(tiny_dit, mixed, ranks=report.ranks)["quantized_bytes"] == _stored_bytes(dit)
    with pytest.raises(ValueError, match="pass ranks="):
        quantized_weight_bytes(tiny_dit, mixed)


def test_int8_block_speed_record_on_a_tiny_config():
    from accelerando.bench.quant import int8_block_speed
    from accelerando.models.stable_audio_lite import DIT_LITE_CONFIG

    rec = int8_block_speed(DIT_LITE_CONFIG, seconds=1.0, rank=8, rounds=1, text_tokens=8)
    assert rec["quantized_layers"] == 10 and rec["relative_error"] < 1e-2  # ||out - ref|| / ||ref||
    assert rec["fp32_speedup_vs_baseline"] == 1.0 and rec["int8+lowrank_latency_s_min"] > 0


def test_int8_block_speed_times_on_its_own_threads_and_restores_the_callers():
    from accelerando.bench.quant import int8_block_speed
    from accelerando.models.stable_audio_lite import DIT_LITE_CONFIG

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rec = int8_block_speed(DIT_LITE_CONFIG, seconds=0.5, rank=4, rounds=1, text_tokens=4, threads=1)
        assert rec["threads"] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_fidelity_records_rank_bit_widths_and_restore_the_pipeline():
    from accelerando.bench.quant import fidelity_to_full_precision
    from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG, build_stable_audio_lite

    pipe = build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG), sigma_data=0.7)
    original = pipe.transformer
    configs = {"w8a8": preset("rtn", 8, 8, group_size=16), "w4a4": preset("rtn", 4, 4, group_size=16)}
    reports = {}
    rows = list(fidelity_to_full_precision(pipe, configs, ["a folk song"], ["a chorale", "a march", "a reel"],
                                           steps=2, seconds=0.5, calib_steps=1, calib_seconds=0.25, reports=reports))
    assert pipe.transformer is original and not any(isinstance(m, SVDQuantLinear) for m in original.modules())
    assert list(reports) == ["w8a8", "w4a4"] and reports["w4a4"].config is configs["w4a4"]
    assert len(rows) == 6 and all(r["quantized_layers"] == 20 for r in rows)
    mean = lambda m, k: sum(r[k] for r in rows if r["method"] == m) / 3  # noqa: E731
    assert mean("w8a8", "si_sdr") > mean("w4a4", "si_sdr")
    assert mean("w8a8", "complex_mrstft") < mean("w4a4", "complex_mrstft")


def test_fidelity_rescores_the_confirmed_configs_on_fresh_prompts_and_noise():
    from accelerando.bench.quant import fidelity_to_full_precision
    from accelerando.metrics import get_embedding
    from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG, build_stable_audio_lite

    pipe = build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG), sigma_data=0.7)
    configs = {"w8a8": preset("rtn", 8, 8, group_size=16), "w4a4": preset("rtn", 4, 4, group_size=16)}
    kw = dict(steps=2, seconds=0.5, calib_steps=1, calib_seconds=0.25, keep_audio=3,
              embedders={"mel-stats": get_embedding("mel-stats")})
    plain = list(fidelity_to_full_precision(pipe, configs, ["a folk song"], ["a chorale", "a march"], **kw))
    rows = list(fidelity_to_full_precision(pipe, configs, ["a folk song"], ["a chorale", "a march"],
                                           confirm_prompts=["a reel", "a waltz", "a chorale"], confirm=["w4a4"], **kw))
    evals = {(r["method"], r["prompt"]): r for r in rows if r["prompt_set"] == "eval"}
    confirms = {(r["method"], r["prompt"]): r for r in rows if r["prompt_set"] == "confirm"}
    assert {k: r["mrstft"] for k, r in evals.items()} == {(r["method"], r["prompt"]): r["mrstft"] for r in plain}
    assert all("audio" in r and "embeddings" in r for r in evals.values())
    assert sorted(confirms) == [("w4a4", i) for i in range(3)]
    assert all("audio" not in r and "embeddings" not in r for r in confirms.values())
    # the confirmation's third prompt repeats the first evaluation prompt, from other noise
    assert 0 < confirms["w4a4", 2]["mrstft"] != evals["w4a4", 0]["mrstft"]
    with pytest.raises(ValueError, match=r"confirm names \['w2a2'\]"):
        next(fidelity_to_full_precision(pipe, configs, ["a folk song"], ["a chorale"], confirm_prompts=["a reel"],
                                        confirm=["w2a2"], steps=2, seconds=0.5))
    with pytest.raises(ValueError, match="confirm_prompts is empty"):
        next(fidelity_to_full_precision(pipe, configs, ["a folk song"], ["a chorale"], confirm=["w4a4"], steps=2, seconds=0.5))
    with pytest.raises(TypeError, match="collection of config names"):
        next(fidelity_to_full_precision(pipe, configs, ["a folk song"], ["a chorale"], confirm_prompts=["a reel"],
                                        confirm="w4a4", steps=2, seconds=0.5))


def test_fidelity_records_carry_embeddings_for_kad_against_the_test_set():
    import numpy as np

    from accelerando.bench.quant import fidelity_to_full_precision, kad_vs_reference, corpus_embeddings
    from accelerando.metrics import get_embedding
    from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG, build_stable_audio_lite

    pipe = build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG), sigma_data=0.7)
    configs = {"w8a8": preset("rtn", 8, 8, group_size=16), "w4a4": preset("rtn", 4, 4, group_size=16)}
    embedders = {"mel-stats": get_embedding("mel-stats")}
    rows = list(fidelity_to_full_precision(pipe, configs, ["a folk song"], ["a chorale", "a march", "a reel"],
                                           steps=2, seconds=0.5, calib_steps=1, calib_seconds=0.25, embedders=embedders))
    by = {(r["method"], r["prompt"]): r for r in rows}
    for i in range(3):  # one full-precision clip per prompt, whatever the config
        assert np.array_equal(by["w8a8", i]["reference_embeddings"]["mel-stats"], by["w4a4", i]["reference_embeddings"]["mel-stats"])
    far = lambda m: np.mean([np.linalg.norm(by[m, i]["embeddings"]["mel-stats"] - by[m, i]["reference_embeddings"]["mel-stats"])  # noqa: E731
                             for i in range(3)])
    assert 0 < far("w8a8") < far("w4a4")  # the finer grid moves the clip's embedding less

    fp = np.stack([by["w8a8", i]["reference_embeddings"]["mel-stats"] for i in range(3)])
    sets = {m: [by[m, i]["embeddings"] for i in range(3)] for m in configs}
    sets["full precision"] = [by["w8a8", i]["reference_embeddings"] for i in range(3)]
    kads = kad_vs_reference(sets, {"mel-stats": fp}, n_boot=20)
    # a set against itself: the unbiased estimator is 2 (mean off-diagonal kernel - 1) / n < 0
    assert kads["full precision"]["mel-stats"].value < 0
    assert all(np.isfinite(kads[m]["mel-stats"].value) for m in configs)

    class Clip:  # what corpus_embeddings reads of a corpus clip
        def __init__(self, seconds, rate, stereo=False):
            self.sample_rate, n = rate, int(seconds * rate)
            t = np.arange(n) / rate
            mono = np.sin(2 * np.pi * 220 * t).astype(np.float32)
            self.audio = np.stack([mono, mono], 1) if stereo else mono

        def load(self):
            return self.audio

    ref = corpus_embeddings([Clip(1.0, 8000), Clip(2.0, 8000, stereo=True)], 0.5, embedders)
    assert ref["mel-stats"].shape[0] == 2
    np.testing.assert_allclose(ref["mel-stats"][0], ref["mel-stats"][1], rtol=1e-5)  # both cut to the same 0.5 s
    with pytest.raises(ValueError, match="mix sample rates"):
        corpus_embeddings([Clip(1.0, 8000), Clip(1.0, 16000)], 0.5, embedders)


def test_quant_pipeline_loads_local_stable_audio_open_and_never_random_weights(tmp_path):
    from accelerando.bench.quant import quant_pipeline
    from accelerando.models.stable_audio import build_stable_audio

    with pytest.raises(ValueError, match="pass weights=DIR"):
        quant_pipeline("stable-audio-open")
    with pytest.raises(ValueError, match="unknown model 'stable-audio'"):
        quant_pipeline("stable-audio")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        quant_pipeline("stable-audio-open", tmp_path / "absent")
    build_stable_audio("tiny", seed=3).save_pretrained(tmp_path)
    pipe = quant_pipeline("stable-audio-open", tmp_path)
    assert pipe.transformer.config.num_layers == build_stable_audio("tiny").transformer.config.num_layers
    assert torch.equal(pipe.transformer.proj_in.weight, build_stable_audio("tiny", seed=3).transformer.proj_in.weight)


@pytest.mark.parametrize("method", ["torchao-w8", "quanto-w8", "quanto-w4"])
def test_external_weight_only_baselines_touch_the_same_layers(tiny_dit, method):
    from accelerando.quant import WeightOnlyConfig

    dit = _copy(tiny_dit)
    with torch.no_grad():
        ref = tiny_dit(**_dit_inputs(tiny_dit))[0]
    report = quantize_(dit, WeightOnlyConfig.from_method(method), calib=_never_run)
    targets = report.quantized
    assert dit.quantization_config == WeightOnlyConfig.from_method(method)
    assert len(targets) == 20 and not any("proj_in" in n or "timestep_proj" in n for n in targets)
    assert type(dit.proj_in) is nn.Linear and type(dit.proj_in.weight) is nn.Parameter  # skipped: untouched
    with torch.no_grad():
        out = dit(**_dit_inputs(tiny_dit))[0]
    assert _rel(out, ref) < (1e-3 if method.endswith("w8") else 5e-2)
    with pytest.raises(ValueError, match="unknown external method"):
        WeightOnlyConfig.from_method("gptq")


def test_windowed_render_equals_the_pipelines_full_decode():
    from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG, build_stable_audio_lite, generate
    from accelerando.quant.objectives import render

    pipe = build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG), sigma_data=0.7)
    window, sr = render(pipe, ["a folk song", "a chorale"], seconds=0.3, steps=2, seed=3)
    full, _ = generate(pipe, ["a folk song", "a chorale"], seconds=0.3, steps=2, seed=3, output_type="pt")
    assert window.shape == torch.as_tensor(full).shape
    assert torch.allclose(window, torch.as_tensor(full), atol=1e-5)


# --- the uniform API, as a new user meets it on a pretrained transformers model ----------------


def _never_run(model):
    raise AssertionError("calibration ran for a config that uses no statistics")


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=32)).eval()


def _bert_batch(seed=0):
    from transformers import BatchEncoding

    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(seed))
    return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})  # a Mapping, not a dict


def test_every_method_is_a_registered_config_with_a_json_round_trip():
    from accelerando.quant import QuantConfig, RTNConfig, SmoothQuantConfig, WeightOnlyConfig

    configs = [SVDQuantConfig(rank=8, clip_grid=(1.0, 0.9)), RTNConfig(8, 8), SmoothQuantConfig(smoothing=0.5),
               WeightOnlyConfig.from_method("quanto-w4")]
    for config in configs:
        d = json.loads(json.dumps(config.to_dict()))
        assert d["version"] == 1 and QuantConfig.from_dict(d) == config and type(QuantConfig.from_dict(d)) is type(config)
    # RTN and SmoothQuant are the presets, bit for bit
    assert RTNConfig(4, 4).to_dict() | {"type": ""} == preset("rtn", 4, 4).to_dict() | {"type": ""}
    assert SmoothQuantConfig(4, 4).to_dict() | {"type": ""} == preset("smoothquant", 4, 4).to_dict() | {"type": ""}
    with pytest.raises(ValueError, match="low-rank"):
        RTNConfig(rank=8)
    with pytest.raises(ValueError, match="not a RTNConfig"):
        RTNConfig.from_dict(SVDQuantConfig().to_dict())
    with pytest.raises(TypeError, match="no quantization handler"):
        quantize_(nn.Linear(64, 64), object())


def test_rtn_through_its_config_equals_the_preset(tiny_dit):
    from accelerando.quant import RTNConfig

    a, b = _copy(tiny_dit), _copy(tiny_dit)
    calib = [_dit_inputs(tiny_dit, s) for s in range(2)]
    quantize_(a, RTNConfig(8, 8, group_size=16), calib=calib)
    quantize_(b, preset("rtn", 8, 8, group_size=16), calib=calib)
    with torch.no_grad():
        assert torch.equal(a(**_dit_inputs(tiny_dit))[0], b(**_dit_inputs(tiny_dit))[0])
    assert isinstance(a.quantization_config, RTNConfig) and not hasattr(a, "svdquant_config")


def test_save_quantized_on_an_inner_module_finds_the_settings(tmp_path):
    from accelerando.quant import quantization_config_of

    model = nn.ModuleDict({"sentence_embedder": _tiny_bert()})
    config = SVDQuantConfig(weight_bits=8, act_bits=8, group_size=16, rank=2, smoothing="off")
    quantize_(model, config)
    inner = model["sentence_embedder"]
    assert model.quantization_config is config and quantization_config_of(inner) is config
    save_quantized(inner, tmp_path / "inner")  # said "no SVDQuantLinear layers" when the settings sat on `model` only
    fresh = load_quantized(_tiny_bert(), tmp_path / "inner")
    with torch.no_grad():
        assert torch.equal(fresh(**_bert_batch()).last_hidden_state, inner(**_bert_batch()).last_hidden_state)
    assert fresh.quantization_config == config


def test_calibration_accepts_any_mapping_and_never_runs_when_unused():
    from accelerando.quant import RTNConfig, SmoothQuantConfig

    weight_only = _tiny_bert()
    report = quantize_(weight_only, RTNConfig(weight_bits=8, act_bits=None, group_size=16), calib=_never_run)
    assert report.quantized
    by_mapping, by_dict = _tiny_bert(), _tiny_bert()
    config = SmoothQuantConfig(8, 8, group_size=16)
    quantize_(by_mapping, config, calib=[_bert_batch(s) for s in range(2)])  # died with an empty AttributeError
    quantize_(by_dict, config, calib=[dict(_bert_batch(s)) for s in range(2)])
    with torch.no_grad():
        assert torch.equal(by_mapping(**_bert_batch(5)).last_hidden_state, by_dict(**_bert_batch(5)).last_hidden_state)


def test_convolutions_are_reported_as_skipped_and_full_precision_parameters_counted():
    model = nn.Sequential(nn.Conv1d(64, 64, 3), nn.Conv1d(64, 64, 3), nn.Linear(64, 64))
    report = quantize_(model, SVDQuantConfig(weight_bits=8, act_bits=None, rank=0, smoothing="off"))
    assert report.quantized == ["2"]
    assert set(report.skipped) == {"0", "1"} and all("Conv1d, not an nn.Linear" in r for r in report.skipped.values())
    conv = 2 * (64 * 64 * 3 + 64)
    assert report.parameters == {"quantized": 64 * 64 + 64, "full_precision": conv,
                                 "full_precision_fraction": conv / (conv + 64 * 64 + 64)}
    assert report.table().set_index("name").loc["0", "parameters"] == 64 * 64 * 3 + 64


def test_skip_patterns_match_path_components_and_say_which_matched():
    from accelerando.quant import DEFAULT_SKIP, skip_pattern

    model = nn.ModuleDict({"sentence_embedder": _tiny_bert()})
    report = quantize_(model, SVDQuantConfig(weight_bits=8, act_bits=None, group_size=16, rank=0, smoothing="off",
                                             skip=("embed", "pooler")))
    # "embed" skipped every layer of a model wrapped in "sentence_embedder" when it matched substrings
    assert "sentence_embedder.encoder.layer.0.attention.self.query" in report.quantized
    rows = report.table().set_index("name")
    assert rows.loc["sentence_embedder.pooler.dense", "pattern"] == "pooler"
    assert "'pooler'" in rows.loc["sentence_embedder.pooler.dense", "reason"]
    assert skip_pattern("decoder.lm_heads.0", DEFAULT_SKIP) == "lm_heads"
    assert skip_pattern("blocks.0.norm1.linear", DEFAULT_SKIP) == "norm*"
    assert skip_pattern("sentence_embedder.encoder.query", DEFAULT_SKIP) is None
    with pytest.raises(ValueError, match="'encoder' skipped"):
        quantize_(nn.ModuleDict({"sentence_embedder": _tiny_bert()}),
                  SVDQuantConfig(group_size=16, rank=0, smoothing="off", skip=("encoder", "pooler")))

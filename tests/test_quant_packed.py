"""W8A16 / W4A16 linears in PyTorch's packed CPU kernels (`accelerando.quant.packed`)."""

import pytest
import torch
from torch import nn

from accelerando.quant import PackedWeightOnlyConfig, PackedWeightOnlyLinear, quantize_


@pytest.mark.parametrize("bits, tolerance", [(8, 0.01), (4, 0.12)])
def test_kernel_applies_the_reference_weight_of_its_codes(bits, tolerance):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96)
    layer = PackedWeightOnlyLinear.from_linear(linear, weight_bits=bits, group_size=64)
    x = torch.randn(5, 256)
    ref = torch.nn.functional.linear(x.bfloat16().float(), layer.reference_weight(), linear.bias.detach())
    y = layer(x)
    assert y.dtype == x.dtype and y.shape == (5, 96)
    # the kernel is the reference weight's matmul up to bf16 rounding of its output
    assert (y - ref).abs().max() <= 0.02 * ref.abs().max()
    # and the codes approximate the original weight to the precision of their bits
    w = linear.weight.detach()
    assert (layer.reference_weight() - w).norm() / w.norm() < tolerance
    assert layer.weight_bytes() < w.numel() * (1.1 if bits == 8 else 0.6)  # against 2 bytes per bf16 weight


def test_quantize_swaps_linears_and_keeps_the_output_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    model.embed = nn.Linear(128, 128)  # a skipped name (DEFAULT_SKIP's "embed")
    x = torch.randn(3, 128)
    dense = model[2](model[1](model[0](x)))
    report = quantize_(model, PackedWeightOnlyConfig(weight_bits=4, group_size=64))
    assert isinstance(model[0], PackedWeightOnlyLinear) and isinstance(model[2], PackedWeightOnlyLinear)
    assert isinstance(model.embed, nn.Linear) and report.skipped["embed"].startswith("name matches")
    packed = model[2](model[1](model[0](x)))
    assert (packed - dense).norm() / dense.norm() < 0.15
    assert model.quantization_config.name == "packed w4a16 g64"
    with pytest.raises(ValueError, match="no calibration"):
        quantize_(nn.Sequential(nn.Linear(64, 64)), PackedWeightOnlyConfig(), calib=lambda m: None)


def test_widths_the_kernels_cannot_take_are_skipped_with_the_reason_and_bad_settings_are_refused():
    # the x86 int8 kernel crashes the process on inputs that are not a multiple of 16 (found on an
    # 18-input control projection), so quantize_ leaves such layers in full precision and says why
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(18, 32), nn.Linear(32, 96))
    report = quantize_(model, PackedWeightOnlyConfig(weight_bits=8))
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], PackedWeightOnlyLinear)
    assert "not a multiple of 16" in report.skipped["0"]
    assert model(torch.randn(3, 18)).shape == (3, 96)
    with pytest.raises(ValueError, match="multiple of 16"):
        PackedWeightOnlyLinear(18, 32, weight_bits=8)
    with pytest.raises(ValueError, match="4 or 8"):
        PackedWeightOnlyConfig(weight_bits=2)
    with pytest.raises(ValueError, match="group_size"):
        PackedWeightOnlyConfig(weight_bits=4, group_size=48)


def test_decoding_speed_times_the_same_decoder_dense_and_packed():
    from accelerando.bench.decode import decode_steps, decoding_candidates, decoding_speed, musicgen_decoder
    from accelerando.quant import TOKEN_SKIP

    decoder = musicgen_decoder("tiny")
    configs = {"bf16": None, "W4A16": PackedWeightOnlyConfig(weight_bits=4, group_size=32, skip=TOKEN_SKIP)}
    models = decoding_candidates(decoder, configs)
    dense, packed = (decode_steps(m, tokens=3) for m in models.values())
    # same inputs, nearby logits: the packed decoder is the dense one up to its 4-bit weights
    a, b = dense().float(), packed().float()
    assert a.shape == b.shape and torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.9
    result = decoding_speed(decoder, configs, tokens=2, rounds=1)
    assert result["bf16"]["speedup_vs_baseline"] == 1.0 and result["W4A16"]["speedup_vs_baseline"] > 0
    assert result["W4A16"]["linear_weight_bytes"] < result["bf16"]["linear_weight_bytes"]

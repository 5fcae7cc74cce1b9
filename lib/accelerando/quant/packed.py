"""W8A16 and W4A16 linears in PyTorch's packed CPU layouts: the decoding path of WP1 on a CPU.

    quantize_(model, PackedWeightOnlyConfig(weight_bits=4, group_size=64, skip=TOKEN_SKIP))

At batch 1, one token at a time, a linear layer reads its whole weight to make one row, so its
time is the bytes it reads; int8 halves them against bf16 and int4 quarters them. On CPUs with
AMX the dense path to beat is bf16 (far faster than fp32 there); these kernels take bf16
activations, dequantize inside the matmul, and only win where the weights dominate (M of one to
a few rows). The layer keeps its codes in the kernels' layouts and runs through them in `forward`,
so fidelity measured through it is fidelity of what was timed.

Numerics (`reference_weight` is the dense weight the kernel applies):
    8-bit  codes q in [-127, 127] per output channel n: W[n, k] = q[n, k] * s[n]
    4-bit  codes q in [0, 15] per group g of `group_size` inputs: W[n, k] = (q[n, k] - 8) * s[g, n] + z[g, n]
           (PyTorch's int4 layout: z is the value of code 8, s and z stored in bf16)
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .api import QuantReport, _parameters, register_quantize_module_handler, select_layers
from .config import INT8_PACK_INPUT_BLOCK, PackedWeightOnlyConfig

INNER_K_TILES = 2  # the int4 layout's tiling of the input dimension (PyTorch accepts 2, 4 or 8)


class PackedWeightOnlyLinear(nn.Module):
    """y = x W^T + b with W stored as 8-bit or grouped 4-bit codes and b in bf16; x is cast to bf16
    for the kernel and y back to x's dtype. Shapes as nn.Linear: x [..., in_features] -> [..., out_features].
    Frozen: codes, scales and bias are buffers (a quantized model is for inference)."""

    def __init__(self, in_features: int, out_features: int, weight_bits: int = 8, group_size: int = 64,
                 bias: bool = True):
        super().__init__()
        if weight_bits == 4 and in_features % group_size:
            raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size}")
        if weight_bits == 8 and in_features % INT8_PACK_INPUT_BLOCK:
            raise ValueError(f"in_features={in_features} is not a multiple of {INT8_PACK_INPUT_BLOCK}: the int8 "
                             "kernel reads inputs in blocks of 16; leave this layer in bf16 (quantize_ skips it)")
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits, self.group_size = weight_bits, group_size
        if weight_bits == 8:
            self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16))
        else:
            self.register_buffer("codes", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales_and_zeros",
                                 torch.zeros(in_features // group_size, out_features, 2, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, weight_bits: int = 8, group_size: int = 64) -> PackedWeightOnlyLinear:
        """Round-to-nearest codes of `linear`'s weight (symmetric per channel at 8 bits, min-max
        per group at 4 bits)."""
        w = linear.weight.detach().float().cpu()
        layer = cls(linear.in_features, linear.out_features, weight_bits, group_size, linear.bias is not None)
        if weight_bits == 8:
            scale = (w.abs().amax(1) / 127).clamp(min=1e-12).bfloat16()
            layer.codes.copy_((w / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8))
            layer.scales.copy_(scale)
        else:
            groups = w.reshape(w.shape[0], -1, group_size)
            low, high = groups.amin(-1), groups.amax(-1)
            scale = ((high - low) / 15).clamp(min=1e-12).bfloat16().float()
            zero = (low + 8 * scale).bfloat16().float()  # the value of code 8
            codes = ((groups - zero[..., None]) / scale[..., None] + 8).round().clamp(0, 15)
            layer.codes.copy_(torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                codes.reshape(w.shape).to(torch.int32), INNER_K_TILES))
            layer.scales_and_zeros.copy_(torch.stack([scale.t(), zero.t()], -1).bfloat16())
            layer._unpacked = codes.reshape(w.shape).to(torch.uint8)  # kept for reference_weight only
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().bfloat16())
        return layer

    def reference_weight(self) -> torch.Tensor:
        """The dense fp32 weight [out, in] the kernel applies (for tests and inspection)."""
        if self.weight_bits == 8:
            return self.codes.float() * self.scales.float()[:, None]
        codes = getattr(self, "_unpacked", None)
        if codes is None:
            raise RuntimeError("reference_weight of a 4-bit layer is available only on the layer from_linear built")
        sz = self.scales_and_zeros.float()  # [groups, out, 2]
        scale = sz[..., 0].t().repeat_interleave(self.group_size, 1)
        zero = sz[..., 1].t().repeat_interleave(self.group_size, 1)
        return (codes.float() - 8) * scale + zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.weight_bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.codes, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.codes, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def weight_bytes(self) -> int:
        """Bytes of everything this layer stores: codes, scales (and zeros), bias (bf16)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.weight_bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, w{self.weight_bits}a16{group}"


@register_quantize_module_handler(PackedWeightOnlyConfig)
def _packed_transform(model: nn.Module, config: PackedWeightOnlyConfig, calib, filter_fn, audio_fn) -> QuantReport:
    if calib is not None:
        raise ValueError("PackedWeightOnlyConfig rounds to nearest and takes no calibration: drop calib=")
    start = time.perf_counter()
    report = QuantReport(config, total_parameters=sum(p.numel() for p in model.parameters()))
    modules = dict(model.named_modules())
    for name in select_layers(model, config, filter_fn, report):
        linear = modules[name]
        layer = PackedWeightOnlyLinear.from_linear(linear, config.weight_bits, config.group_size)
        layer.quantization_config = config
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, layer)
        report.layers.append({"name": name, "status": "quantized", "reason": "", "pattern": None,
                              "shape": tuple(linear.weight.shape), "parameters": _parameters(linear),
                              "weight_bytes": layer.weight_bytes(), "fp16_bytes": 2 * _parameters(linear)})
    report.seconds = time.perf_counter() - start
    return report

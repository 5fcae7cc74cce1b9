"""Triton W4A4 kernels (`accelerando.quant.triton_kernels`) against a torch reference built only from
`accelerando.quant.primitives`.

Without a GPU the kernels run on CPU tensors under Triton's interpreter, which is ~1000x slower
than torch: shapes stay tiny. TRITON_INTERPRET=1 has to be in the environment before the first
`import triton` (Triton builds its own language helpers for one mode at import), so it is set
here before anything imports triton. When something else in the session imported triton first,
the kernel tests skip and `test_rerun_in_fresh_interpreter_process` runs this file in a subprocess.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not _ON_GPU:
    # Stays set for the rest of the session: harmless without a GPU, where nothing compiles Triton.
    os.environ["TRITON_INTERPRET"] = "1"

from accelerando.quant import triton_kernels as tk  # noqa: E402  (after TRITON_INTERPRET)
from accelerando.quant.primitives import (  # noqa: E402
    pack_int4, quantize_groups, quantized_matmul, unpack_int4,
)

DEVICE = "cuda" if _ON_GPU else "cpu"
KERNEL_FILE = Path(__file__).resolve().parents[1] / "lib" / "accelerando" / "quant" / "triton_kernels.py"

_HAS_TRITON = tk.triton is not None
_IN_PROCESS = _HAS_TRITON and tk.available()
if not _HAS_TRITON:
    _SKIP_REASON = f"triton cannot be imported ({tk._IMPORT_ERROR!r}); pip install triton"
else:
    _SKIP_REASON = ("triton was imported in this session before TRITON_INTERPRET=1 was set; "
                    "test_rerun_in_fresh_interpreter_process covers these tests in a subprocess")
kernels = pytest.mark.skipif(not _IN_PROCESS, reason=_SKIP_REASON)


# ---------------------------------------------------------------------------------------------
# Reference and fixtures
# ---------------------------------------------------------------------------------------------

def reference(x, smooth, shift, qweight, wscales, lora_down, lora_up, bias, g, signed):
    """y [T, O] from primitives only: smoothing, dynamic int4 activations, group-wise int GEMM, low-rank, bias."""
    x_s = (x.float() + shift) / smooth
    qx, sx = quantize_groups(x_s, 4, g, signed)
    y = quantized_matmul(qx, sx, unpack_int4(qweight), wscales.float(), g)
    if lora_down is not None and lora_down.shape[0]:
        y = y + (x_s @ lora_down.float().T) @ lora_up.float().T
    if bias is not None:
        y = y + bias
    return y


def rel_err(got, ref):
    return ((got.float() - ref).abs().max() / ref.abs().max()).item()


def make_weights(o, k, r, g, wdtype=torch.float16, with_bias=True):
    qw, sw = quantize_groups(torch.randn(o, k), 4, g)
    up = torch.randn(o, r) * 0.3
    down = torch.randn(r, k) * 0.3
    bias = torch.randn(o) if with_bias else None
    return pack_int4(qw), sw.to(wdtype), down, up, bias


def dyadic_activations(t, k, g, signed, shift, dtype):
    """x [t, k] whose x_s = (x + shift) / smooth is exact and full of .5 ties, plus an all-zero group.

    smooth is a power of two per channel and x_s a multiple of 1/4, so x_s * smooth - shift and the
    kernel's division are exact in fp16 and fp32; each tie row has a group whose max sets the scale
    to exactly 1 or 1/2, making every half-integer code value a rounding tie.
    """
    smooth = 2.0 ** torch.randint(-2, 3, (k,)).float()
    if signed:
        xs = torch.randint(-14, 15, (t, k)).float() / 2  # scale 1 where |max| = 7: every odd value ties
        xs[:, ::g] = 7.0
        xs[1::3] = torch.randint(-7, 8, (len(range(1, t, 3)), k)).float() / 4
        xs[1::3, ::g] = -3.5  # scale 1/2: x_s / scale in half-integers
    else:
        xs = torch.randint(-4, 31, (t, k)).float() / 2  # negatives clamp to code 0
        xs[:, ::g] = 15.0
        xs[1::3] = torch.randint(0, 15, (len(range(1, t, 3)), k)).float() / 4
        xs[1::3, ::g] = 7.5
        xs[2, g:2 * g] = -torch.rand(g) - 0.25  # group with no positive value: scale 1, all codes 0
    xs[0, :g] = 0.0  # all-zero group: scale 1
    x = (xs * smooth - shift).to(dtype)
    return x.to(DEVICE), smooth.to(DEVICE)


# ---------------------------------------------------------------------------------------------
# Kernel 1: smoothing + quantization + packing + low-rank down-projection
# ---------------------------------------------------------------------------------------------

@kernels
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("g", [32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_activation_codes_and_scales_match_primitives(signed, g, dtype):
    torch.manual_seed(0)
    t, k = 24, 128
    shift = 0.0 if signed else 4.0
    x_tie, smooth = dyadic_activations(t, k, g, signed, shift, dtype)
    qx, sx, lr = tk.quantize_act_lowrank(x_tie, smooth, shift, None, g, signed, block_t=16)
    x_s = (x_tie.float() + shift) / smooth
    q_ref, s_ref = quantize_groups(x_s, 4, g, signed)
    assert qx.dtype == torch.uint8 and qx.shape == (t, k // 2)
    assert torch.equal(unpack_int4(qx, signed), q_ref)
    assert torch.equal(sx, s_ref)  # 0 ulp
    assert lr.shape == (t, 0)
    ties = ((x_s / s_ref.repeat_interleave(g, 1)).frac().abs() == 0.5).sum().item()
    assert ties > t * k // 8  # the input really exercises round-half-to-even
    assert (s_ref[0, 0] == 1.0) and (q_ref[0, :g] == 0).all()

    # General values: non-dyadic smoothing and a shift that is not exactly representable.
    x = (torch.randn(t, k) * 3 + (0.0 if signed else 2.0)).to(dtype).to(DEVICE)
    smooth = (torch.rand(k) + 0.5).to(DEVICE)
    shift = 0.0 if signed else 0.1
    qx, sx, _ = tk.quantize_act_lowrank(x, smooth, shift, None, g, signed)
    q_ref, s_ref = quantize_groups((x.float() + shift) / smooth, 4, g, signed)
    assert torch.equal(unpack_int4(qx, signed), q_ref)
    assert torch.equal(sx, s_ref)


@kernels
@pytest.mark.parametrize("r", [0, 8, 16, 136])
def test_lowrank_down_projection(r):
    torch.manual_seed(1)
    t, k, g = 40, 128, 64
    x = (torch.randn(t, k) * 2).to(DEVICE)
    smooth = (torch.rand(k) + 0.5).to(DEVICE)
    down = torch.randn(r, k).to(DEVICE)
    qx, sx, lr = tk.quantize_act_lowrank(x, smooth, 0.25, down, g, True, block_t=16)
    x_s = (x + 0.25) / smooth
    assert lr.shape == (t, r) and lr.dtype == torch.float32
    if r:  # r = 136 spans two rank tiles (grid axis 1); codes must still be written once, correctly
        assert rel_err(lr, x_s @ down.T) < 1e-5
    q_ref, s_ref = quantize_groups(x_s, 4, g, True)
    assert torch.equal(unpack_int4(qx), q_ref) and torch.equal(sx, s_ref)


@kernels
def test_quantize_empty_tokens():
    k, g = 64, 32
    qx, sx, lr = tk.quantize_act_lowrank(torch.zeros(0, k, device=DEVICE), torch.ones(k, device=DEVICE), 0.0,
                                         torch.zeros(8, k, device=DEVICE), g)
    assert qx.shape == (0, k // 2) and sx.shape == (0, k // g) and lr.shape == (0, 8)


# ---------------------------------------------------------------------------------------------
# Kernel 2: group-wise W4A4 GEMM + low-rank up-projection + bias
# ---------------------------------------------------------------------------------------------

@kernels
@pytest.mark.parametrize("g, k, r, with_bias, signed, wdtype, t, o, block_t, block_o", [
    (64, 128, 0, False, True, torch.float16, 40, 48, 16, 32),
    (64, 128, 16, True, False, torch.float32, 40, 48, 16, 32),
    (32, 128, 8, True, True, torch.float16, 33, 64, None, None),
    (32, 64, 0, True, False, torch.float32, 17, 32, 16, 16),
    (48, 96, 8, False, True, torch.float16, 20, 40, 16, 16),  # group not a power of two
])
def test_gemm_matches_reference(g, k, r, with_bias, signed, wdtype, t, o, block_t, block_o):
    torch.manual_seed(2)
    qweight, wscales, down, up, bias = make_weights(o, k, r, g, wdtype, with_bias)
    x = torch.randn(t, k) * 2 + (0.0 if signed else 3.0)
    smooth, shift = torch.rand(k) + 0.5, 0.0 if signed else 1.5
    y_ref = reference(x, smooth, shift, qweight, wscales, down, up, bias, g, signed)

    # Feed the GEMM the reference's own codes so this test isolates kernel 2.
    x_s = (x + shift) / smooth
    qx, sx = quantize_groups(x_s, 4, g, signed)
    lr = x_s @ down.T
    dev = lambda v: None if v is None else v.to(DEVICE)  # noqa: E731
    y = tk.w4a4_gemm(dev(pack_int4(qx)), dev(sx), dev(qweight), dev(wscales), dev(lr) if r else None,
                     dev(up) if r else None, dev(bias), g, signed, block_t=block_t, block_o=block_o)
    assert y.shape == (t, o) and y.dtype == torch.float32
    assert rel_err(y.cpu(), y_ref) < 1e-5


@kernels
def test_gemm_zero_rank_tensors():
    torch.manual_seed(3)
    t, k, o, g = 16, 64, 32, 32
    qweight, wscales, _, _, bias = make_weights(o, k, 0, g)
    qx, sx = quantize_groups(torch.randn(t, k), 4, g)
    args = [v.to(DEVICE) for v in (pack_int4(qx), sx, qweight, wscales)]
    y0 = tk.w4a4_gemm(*args, torch.zeros(t, 0, device=DEVICE), torch.zeros(o, 0, device=DEVICE), bias.to(DEVICE), g)
    y1 = tk.w4a4_gemm(*args, None, None, bias.to(DEVICE), g)
    assert torch.equal(y0, y1)


# ---------------------------------------------------------------------------------------------
# The whole layer
# ---------------------------------------------------------------------------------------------

@kernels
@pytest.mark.parametrize("signed, dtype, r", [
    (True, torch.float32, 16), (False, torch.float16, 8), (True, torch.float16, 0),
])
def test_w4a4_linear_batch_dims(signed, dtype, r):
    torch.manual_seed(4)
    k, o, g = 128, 32, 64
    qweight, wscales, down, up, bias = make_weights(o, k, r, g)
    x = (torch.randn(2, 3, 7, k) * 2 + (0.0 if signed else 3.0)).to(dtype)
    smooth, shift = torch.rand(k) + 0.5, 0.0 if signed else 2.0
    dev = lambda v: v.to(DEVICE)  # noqa: E731
    y = tk.w4a4_linear(dev(x), dev(smooth), shift, dev(qweight), dev(wscales), dev(down), dev(up), dev(bias), g, signed)
    y_ref = reference(x.reshape(-1, k), smooth, shift, qweight, wscales, down, up, bias, g, signed)
    assert y.shape == (2, 3, 7, o)
    assert rel_err(y.reshape(-1, o).cpu(), y_ref) < 1e-5


@kernels
def test_svdquant_linear_triton_backend_matches_reference_backend():
    from accelerando.quant.linear import SVDQuantLinear

    torch.manual_seed(5)
    k, o, g, r = 64, 32, 32, 8
    layer = SVDQuantLinear(k, o, group_size=g, rank=r, act_shift=2.0, act_signed=False, backend="triton")
    qweight, wscales, down, up, bias = make_weights(o, k, r, g)
    for name, value in [("qweight", qweight), ("wscales", wscales), ("lora_down", down.half()),
                        ("lora_up", up.half()), ("bias", bias), ("smooth", torch.rand(k) + 0.5)]:
        getattr(layer, name).copy_(value)
    layer = layer.to(DEVICE)
    x = (torch.rand(3, 5, k) * 4 - 2).to(DEVICE)
    y = layer(x)
    layer.backend = "reference"
    y_ref = layer(x)
    assert rel_err(y.cpu(), y_ref.cpu().float()) < 1e-5


@kernels
def test_compact_storage_layer_triton_matches_reference_backend():
    from accelerando.quant.linear import SVDQuantLinear

    torch.manual_seed(7)
    linear = torch.nn.Linear(64, 32)
    layer = SVDQuantLinear.from_linear(linear, group_size=32, rank=8, scale_format="fp8", lowrank_bits=8,
                                       backend="triton").to(DEVICE)
    x = torch.randn(3, 5, 64).to(DEVICE)
    y = layer(x)
    layer.backend = "reference"
    assert rel_err(y.cpu(), layer(x).cpu().float()) < 1e-5


# ---------------------------------------------------------------------------------------------
# Errors, availability
# ---------------------------------------------------------------------------------------------

@kernels
def test_bad_inputs_raise_clear_errors():
    k, o, g, r, t = 128, 32, 64, 8, 16
    qweight, wscales, down, up, bias = (v.to(DEVICE) for v in make_weights(o, k, r, g))
    x, smooth = torch.randn(t, k, device=DEVICE), torch.ones(k, device=DEVICE)
    qx, sx, lr = tk.quantize_act_lowrank(x, smooth, 0.0, down, g)

    with pytest.raises(ValueError, match="not a multiple of group_size"):
        tk.quantize_act_lowrank(x[:, :96], smooth[:96], 0.0, None, 64)
    with pytest.raises(ValueError, match="even"):
        tk.quantize_act_lowrank(x, smooth, 0.0, None, 33)
    with pytest.raises(ValueError, match=">= 16"):
        tk.quantize_act_lowrank(x, smooth, 0.0, None, 8)
    with pytest.raises(ValueError, match="smooth"):
        tk.quantize_act_lowrank(x, smooth[:64], 0.0, None, g)
    with pytest.raises(ValueError, match="lora_down"):
        tk.quantize_act_lowrank(x, smooth, 0.0, down[:, :64], g)
    with pytest.raises(ValueError, match="block_t"):
        tk.quantize_act_lowrank(x, smooth, 0.0, down, g, block_t=24)

    with pytest.raises(TypeError, match="uint8"):
        tk.w4a4_gemm(qx, sx, qweight.to(torch.int8), wscales, lr, up, bias, g)
    with pytest.raises(TypeError, match="uint8"):
        tk.w4a4_gemm(qx.float(), sx, qweight, wscales, lr, up, bias, g)
    with pytest.raises(ValueError, match="wscales"):
        tk.w4a4_gemm(qx, sx, qweight, wscales[:, :1], lr, up, bias, g)
    with pytest.raises(ValueError, match="K // group_size"):  # scales laid out for a different group size
        tk.w4a4_gemm(qx, sx, qweight, wscales, lr, up, bias, 32)
    with pytest.raises(ValueError, match="disagree on K"):
        tk.w4a4_gemm(qx, sx, qweight[:, :32], wscales, lr, up, bias, g)
    with pytest.raises(ValueError, match="sx"):
        tk.w4a4_gemm(qx, sx[:, :1], qweight, wscales, lr, up, bias, g)
    with pytest.raises(ValueError, match="lora_up"):
        tk.w4a4_gemm(qx, sx, qweight, wscales, lr, up[:, :4], bias, g)
    with pytest.raises(ValueError, match="both"):
        tk.w4a4_gemm(qx, sx, qweight, wscales, lr, None, bias, g)
    with pytest.raises(ValueError, match="bias"):
        tk.w4a4_gemm(qx, sx, qweight, wscales, lr, up, bias[:5], g)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        tk.w4a4_linear(torch.randn(2, 3, 96, device=DEVICE), smooth[:96], 0.0, qweight[:, :48], wscales,
                       None, None, bias, g)


@kernels
def test_available_in_this_process():
    assert tk.available()


def test_module_imports_without_triton(monkeypatch):
    # A fresh copy of the module with `import triton` failing, as on a machine without triton.
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_triton_kernels_without_triton", KERNEL_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod.available()
    with pytest.raises(RuntimeError, match="pip install triton"):
        mod.w4a4_linear(torch.zeros(2, 64), torch.ones(64), 0.0, torch.zeros(8, 32, dtype=torch.uint8),
                        torch.ones(8, 1), None, None, None)


@pytest.mark.skipif(_IN_PROCESS or not _HAS_TRITON or _ON_GPU, reason="kernel tests ran in this process")
def test_rerun_in_fresh_interpreter_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = Path(__file__).resolve()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here)],
                          cwd=here.parents[1], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary

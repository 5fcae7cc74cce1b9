"""The radial "blocks" kernel in Triton, for GPUs: one program per (query block, batch x head).

Each program loads its block of queries once, walks the plan's key list in tiles (the keys are
gathered by index, so the bands cost what they hold, not a dense block each), adds the plan's
bias (0 allowed, -inf not) and keeps an online softmax (running max and sum, FlashAttention's
recurrence), so nothing of size block x width is ever stored. The plan and the bias are the
torch kernel's (`radial.block_plan`), so both compute the same attention.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 in the
environment before triton is first imported; slow, for tests at tiny shapes).
"""

from __future__ import annotations

import os

import torch

from ..quant.triton_kernels import available, tl, triton


def _radial_block_kernel(Q, K, V, O, IDX, BIAS, KP,
                         stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                         stride_ob, stride_oh, stride_on,
                         heads, n_rows, first_row, block, width, head_dim, n_keys, scale,
                         HAS_KP: tl.constexpr, IEEE: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    row = blk * block + r  # among the non-sink queries
    row_ok = (r < block) & (row < n_rows)
    d_ok = d < head_dim
    q = tl.load(Q + b * stride_qb + h * stride_qh + (first_row + row)[:, None] * stride_qn + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    # a finite start: a tile whose keys are all masked then adds exp(-inf) = 0, never NaN
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, width, BLOCK_N):
        c = n0 + tl.arange(0, BLOCK_N)
        c_ok = c < width
        idx = tl.load(IDX + blk * width + c, mask=c_ok, other=0)
        kv_off = b * stride_kb + h * stride_kh + idx[:, None] * stride_kn + d[None, :]
        kv_mask = c_ok[:, None] & d_ok[None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        bias = tl.load(BIAS + blk * block * width + r[:, None] * width + c[None, :],
                       mask=(r < block)[:, None] & c_ok[None, :], other=float("-inf"))
        s = s * scale + bias
        if HAS_KP:
            exists = tl.load(KP + b * n_keys + idx, mask=c_ok, other=0)
            s = tl.where(exists[None, :] != 0, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # a row with no key: zeros
    tl.store(O + b * stride_ob + h * stride_oh + row[:, None] * stride_on + d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


_JIT: dict[str, object] = {}


def _kernel():
    if not available():
        raise RuntimeError("the radial Triton kernel needs a CUDA GPU, or CPU tensors under Triton's interpreter "
                           "(TRITON_INTERPRET=1 in the environment before triton is first imported); elsewhere use "
                           "kernel='blocks'")
    mode = os.environ.get("TRITON_INTERPRET", "0")
    if mode not in _JIT:  # triton.jit picks compiled or interpreted execution when it wraps
        _JIT[mode] = triton.jit(_radial_block_kernel)
    return _JIT[mode]


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def triton_block_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: dict,
                           bias: torch.Tensor, key_padding_mask: torch.Tensor | None, scale: float,
                           block_n: int = 32) -> torch.Tensor:
    """The non-sink rows of `query` [B, H, Nq, D] (from row plan["dense_rows"]) against `key`,
    `value` [B, H, Nk, D] under `plan` and its `bias` [blocks, block, width]; returns
    [B, H, Nq - dense_rows, D] in the query's dtype."""
    if query.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"the radial Triton kernel got {query.device.type} tensors: move them to a CUDA device, or "
                           "use kernel='blocks' on a CPU (TRITON_INTERPRET=1 runs it there, slowly, for tests)")
    batch, heads, n_queries, dim = query.shape
    first = plan["dense_rows"]
    n_rows = n_queries - first
    q, k, v = query.contiguous(), key.contiguous(), value.contiguous()
    out = torch.empty(batch, heads, n_rows, dim, dtype=query.dtype, device=query.device)
    index = plan["index"].to(torch.int32).contiguous()
    kp = (key_padding_mask.to(torch.int8).contiguous() if key_padding_mask is not None
          else torch.zeros(1, dtype=torch.int8, device=query.device))
    grid = (plan["blocks"], batch * heads)
    _kernel()[grid](q, k, v, out, index, bias.float().contiguous(), kp,
                    q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    out.stride(0), out.stride(1), out.stride(2),
                    heads, n_rows, first, plan["block"], index.shape[1], dim, key.shape[2], float(scale),
                    HAS_KP=key_padding_mask is not None, IEEE=query.dtype == torch.float32,
                    BLOCK_M=_pow2(plan["block"]), BLOCK_N=block_n, BLOCK_D=_pow2(dim))
    return out

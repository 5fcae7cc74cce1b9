"""LaCT-Audio: large-chunk test-time training beside sliding-window attention.

A LaCT layer (Zhang et al., "Test-Time Training Done Right", 2025) holds two token mixers that
read the same normalised input and whose outputs are summed:

- **window attention**: softmax attention over the `window` tokens before each query (and
  `lookahead` tokens after it, for recognition), with rotary positions; it carries the local
  detail.
- **large-chunk test-time training (TTT)**: per head, a small SwiGLU network
  f(x) = W1 (silu(W0 x) * (W2 x)) whose weights are *fast weights*: once per chunk of `chunk`
  tokens they take one optimiser step that raises sum_t lr_t <v_t, f(k_t)> over the chunk's keys
  and values (per-token learning rates lr_t come from a learned projection), then every later
  query reads f(q). The fast weights are the layer's memory of everything before the chunk, at a
  cost linear in the sequence length and a state of fixed size.

Chunks are causal ("apply, then update"): the queries of chunk i read the weights updated
through chunk i - 1, so a token never sees its own chunk through the fast weights (the window
attention sees it). The update is Muon by default (momentum, then the update orthogonalised by a
Newton-Schulz iteration), or plain SGD / Adam for the ablation; after each update every row of a
fast weight is rescaled to its initial norm, which keeps a long sequence from inflating them.

`ChunkProcessor` runs a stack of layers over a stream: pieces of any length, with the fast
weights, the tokens of a half-filled chunk and the attention's last `window` keys carried across
calls, so that a stream cut anywhere gives the outputs of the whole sequence at once (memory
stays constant however long the stream runs). Shapes: tokens [batch, length, dim].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

OPTIMIZERS = ("muon", "sgd", "adam")


@dataclass(frozen=True)
class LaCTConfig:
    """One LaCT layer's shape.

    dim          model width
    heads        window-attention heads (dim divisible by heads, head size even for rotary)
    window       keys before each query the attention sees (the query's own included)
    lookahead    keys after each query it also sees (0: causal, for generation and streaming)
    fast_weights False drops the TTT branch: a sliding-window transformer (and with
                 window >= the sequence, a standard one), the matched baselines
    ttt_heads    fast-weight heads; each holds a SwiGLU of head size -> head size x ttt_expand
    chunk        tokens per fast-weight update (the paper's 2,048; 512-4,096 here)
    optimizer    "muon", "sgd" or "adam": the fast weights' update rule
    momentum     momentum of the muon and sgd updates (0: none)
    base_lr      per-token learning rate where the projection outputs zero (softplus keeps it > 0)
    adam_step    step size of the adam update (its per-element step is about this)
    mlp_ratio    hidden width of the SwiGLU feed-forward, times dim
    """

    dim: int = 256
    heads: int = 4
    window: int = 256
    lookahead: int = 0
    fast_weights: bool = True
    ttt_heads: int = 2
    ttt_expand: int = 2
    chunk: int = 512
    optimizer: str = "muon"
    momentum: float = 0.9
    base_lr: float = 1e-3
    adam_step: float = 1e-2
    mlp_ratio: float = 8 / 3

    def __post_init__(self):
        checks = [
            (self.dim % self.heads == 0 and (self.dim // self.heads) % 2 == 0,
             f"dim={self.dim}, heads={self.heads}: the head size dim / heads must be a whole, even number (rotary)"),
            (self.window >= 1, f"window={self.window}: the attention must see at least the query itself"),
            (self.lookahead >= 0, f"lookahead={self.lookahead}: a number of future tokens >= 0"),
            (self.dim % self.ttt_heads == 0, f"dim={self.dim}, ttt_heads={self.ttt_heads}: dim must divide evenly"),
            (self.ttt_expand >= 1, f"ttt_expand={self.ttt_expand}: the fast SwiGLU is at least as wide as its head"),
            (self.chunk >= 1, f"chunk={self.chunk}: a fast-weight chunk holds at least one token"),
            (self.optimizer in OPTIMIZERS, f"optimizer={self.optimizer!r}: use one of {OPTIMIZERS}"),
            (0 <= self.momentum < 1, f"momentum={self.momentum}: use 0 <= momentum < 1"),
            (self.base_lr > 0, f"base_lr={self.base_lr}: a learning rate > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ---------------------------------------------------------------------------------------------
# Fast weights: apply, gradient, orthogonalised update
# ---------------------------------------------------------------------------------------------


def swiglu_apply(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(x) = W1 (silu(W0 x) * (W2 x)) per batch row: w0, w2 [b, hidden, d], w1 [b, d, hidden],
    x [b, n, d] -> [b, n, d]."""
    return (F.silu(x @ w0.transpose(1, 2)) * (x @ w2.transpose(1, 2))) @ w1.transpose(1, 2)


def swiglu_chunk_gradient(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient of sum_t lr_t,i <v_t, f(k_t)> with respect to each fast weight W_i, for a whole
    chunk at once: k, v [b, n, d], lr [b, n, 3] (one rate per token for W0, W1, W2). Returns
    (dW0 [b, hidden, d], dW1 [b, d, hidden], dW2 [b, hidden, d]), the ascent direction."""
    gate_pre = k @ w0.transpose(1, 2)  # [b, n, hidden]
    up = k @ w2.transpose(1, 2)
    gate = F.silu(gate_pre)
    d_hidden = v @ w1  # [b, n, hidden]: d<v, W1 h>/dh
    sig = torch.sigmoid(gate_pre)
    d_gate_pre = d_hidden * up * sig * (1 + gate_pre * (1 - sig))  # silu'(x) = sig (1 + x (1 - sig))
    d_up = d_hidden * gate
    dw1 = (v * lr[..., 1:2]).transpose(1, 2) @ (gate * up)
    dw0 = (d_gate_pre * lr[..., 0:1]).transpose(1, 2) @ k
    dw2 = (d_up * lr[..., 2:3]).transpose(1, 2) @ k
    return dw0, dw1, dw2


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Muon's orthogonalisation: about U V^T for g = U S V^T ([b, m, n]), by a quintic Newton-Schulz
    iteration (coefficients of Jordan et al.'s Muon, which push every singular value into roughly
    [0.7, 1.2] in five steps rather than to exactly 1)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    wide = x.shape[-2] > x.shape[-1]
    if wide:
        x = x.transpose(-2, -1)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        s = x @ x.transpose(-2, -1)
        x = a * x + (b * s + c * s @ s) @ x
    return (x.transpose(-2, -1) if wide else x).to(g.dtype)


@dataclass
class FastWeights:
    """The fast weights of one layer for a batch, [batch x ttt_heads, ...] each, with what their
    update rule carries: the row norms they are kept at, momentum (muon, sgd) or Adam's moments,
    and the number of updates so far."""

    w: list[torch.Tensor]
    row_norms: list[torch.Tensor]
    moments: list[torch.Tensor] = field(default_factory=list)
    second_moments: list[torch.Tensor] = field(default_factory=list)
    updates: int = 0


def fast_weight_update(state: FastWeights, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor,
                       config: LaCTConfig) -> FastWeights:
    """One update from a chunk's keys, values and learning rates ([b, n, d], [b, n, d], [b, n, 3])."""
    grads = swiglu_chunk_gradient(*state.w, k, v, lr)
    moments, second = state.moments, state.second_moments
    if config.optimizer == "adam":
        beta1, beta2, t = 0.9, 0.999, state.updates + 1
        moments = [beta1 * m + (1 - beta1) * g for m, g in zip(moments or [0.0] * 3, grads)]
        second = [beta2 * s + (1 - beta2) * g * g for s, g in zip(second or [0.0] * 3, grads)]
        steps = [config.adam_step * (m / (1 - beta1**t)) / ((s / (1 - beta2**t)).sqrt() + 1e-8)
                 for m, s in zip(moments, second)]
    else:
        if config.momentum:
            moments = [config.momentum * m + g for m, g in zip(moments or [0.0] * 3, grads)]
            grads = moments
        steps = [newton_schulz(g) for g in grads] if config.optimizer == "muon" else list(grads)
    w = []
    for weight, step, norm in zip(state.w, steps, state.row_norms):
        weight = weight + step
        w.append(weight / (weight.norm(dim=-1, keepdim=True) + 1e-5) * norm)
    return FastWeights(w, state.row_norms, list(moments), list(second), state.updates + 1)


# ---------------------------------------------------------------------------------------------
# Window attention with rotary positions
# ---------------------------------------------------------------------------------------------


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """Rotary position embedding of x [b, heads, n, d] (d even) at integer `positions` [n]."""
    d = x.shape[-1]
    freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angle = positions.to(torch.float32)[:, None] * freq  # [n, d/2]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_start: int, key_start: int,
                     window: int, lookahead: int = 0, block: int = 256) -> torch.Tensor:
    """Softmax attention of queries [b, h, nq, d] at positions query_start.. to keys and values
    [b, h, nk, d] at key_start..: query i sees keys j with i - window < j <= i + lookahead.
    Queries go in blocks of `block`, each against only the keys its block can reach, so time and
    memory grow with nq x (window + lookahead + block), not nq x nk."""
    out = torch.empty_like(q)
    nq, nk = q.shape[2], k.shape[2]
    for a in range(0, nq, block):
        b = min(a + block, nq)
        lo = max(query_start + a - window + 1 - key_start, 0)
        hi = min(query_start + b - 1 + lookahead - key_start + 1, nk)
        qpos = torch.arange(query_start + a, query_start + b, device=q.device)[:, None]
        kpos = torch.arange(key_start + lo, key_start + hi, device=q.device)[None, :]
        mask = (kpos > qpos - window) & (kpos <= qpos + lookahead)
        out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, lo:hi], v[:, :, lo:hi], attn_mask=mask)
    return out


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-5)


class SwiGLU(nn.Module):
    """The feed-forward: W_down (silu(W_gate x) * W_up x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


@dataclass
class LayerState:
    """What one layer carries between pieces of a stream: the next token's position, the last
    `window - 1` attention keys and values (rotated), the fast weights, and the keys, values and
    rates of the current, unfinished chunk."""

    position: int = 0
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    fast: FastWeights | None = None
    pending: list[torch.Tensor] | None = None


class LaCTLayer(nn.Module):
    """Pre-norm residual layer: x + window_attention(x) + ttt(x), then x + SwiGLU(x); the TTT
    term is left out when `config.fast_weights` is False."""

    def __init__(self, config: LaCTConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.norm = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        if config.fast_weights:
            head = d // config.ttt_heads
            hidden = head * config.ttt_expand
            self.ttt_qkv = nn.Linear(d, 3 * d, bias=False)
            self.ttt_lr = nn.Linear(d, 3 * config.ttt_heads)
            nn.init.zeros_(self.ttt_lr.weight)
            nn.init.constant_(self.ttt_lr.bias, _inverse_softplus(config.base_lr))
            self.w0 = nn.Parameter(torch.randn(config.ttt_heads, hidden, head) / math.sqrt(head))
            self.w1 = nn.Parameter(torch.randn(config.ttt_heads, head, hidden) / math.sqrt(hidden))
            self.w2 = nn.Parameter(torch.randn(config.ttt_heads, hidden, head) / math.sqrt(head))
            self.ttt_norm = nn.RMSNorm(head)
            self.ttt_out = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d)
        self.mlp = SwiGLU(d, int(round(config.mlp_ratio * d)))

    # -- the two mixers ---------------------------------------------------------------------

    def _attention(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        c = self.config
        b, n, d = x.shape
        q, k, v = (t.view(b, n, c.heads, d // c.heads).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        positions = torch.arange(state.position, state.position + n, device=x.device)
        q, k = rotate(q, positions), rotate(k, positions)
        key_start = state.position
        if state.keys is not None:
            key_start -= state.keys.shape[2]
            k, v = torch.cat([state.keys, k], dim=2), torch.cat([state.values, v], dim=2)
        out = window_attention(q, k, v, state.position, key_start, c.window, c.lookahead)
        first = max(k.shape[2] - (c.window - 1), 0)  # the keys a later query can still see
        state.keys, state.values = k[:, :, first:], v[:, :, first:]
        return self.attn_out(out.transpose(1, 2).reshape(b, n, d))

    def initial_fast_weights(self, batch: int) -> FastWeights:
        w = [p.repeat(batch, 1, 1) for p in (self.w0, self.w1, self.w2)]
        return FastWeights(w, [t.norm(dim=-1, keepdim=True) for t in w])

    def _ttt(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        c = self.config
        b, n, d = x.shape
        h, head = c.ttt_heads, d // c.ttt_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # [b, n, h x e] -> [b x h, n, e]
            return t.view(b, n, h, -1).transpose(1, 2).reshape(b * h, n, -1)

        q, k, v = (heads(t) for t in self.ttt_qkv(x).chunk(3, dim=-1))
        q, k, v = _l2_normalize(F.silu(q)), _l2_normalize(F.silu(k)), F.silu(v)
        lr = heads(F.softplus(self.ttt_lr(x).float()).to(x.dtype))  # [b x h, n, 3]
        if state.fast is None:
            state.fast = self.initial_fast_weights(b)
        out, start = [], 0
        while start < n:  # apply, then update, at the absolute chunk boundaries
            filled = 0 if state.pending is None else state.pending[0].shape[1]
            stop = min(n, start + c.chunk - filled)
            out.append(swiglu_apply(*state.fast.w, q[:, start:stop]))
            new = [k[:, start:stop], v[:, start:stop], lr[:, start:stop]]
            state.pending = new if state.pending is None else [torch.cat([p, t], dim=1)
                                                                for p, t in zip(state.pending, new)]
            if state.pending[0].shape[1] == c.chunk:
                state.fast = fast_weight_update(state.fast, *state.pending, c)
                state.pending = None
            start = stop
        y = self.ttt_norm(torch.cat(out, dim=1))
        return self.ttt_out(y.view(b, h, n, head).transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """x [b, n, dim] at positions state.position.. (0 for a fresh state) -> ([b, n, dim], state)."""
        state = LayerState() if state is None else state
        h = self.norm(x)
        mixed = self._attention(h, state)
        if self.config.fast_weights:
            mixed = mixed + self._ttt(h, state)
        state.position += x.shape[1]
        x = x + mixed
        return x + self.mlp(self.mlp_norm(x)), state


def matched_layer(config: LaCTConfig, window: int) -> LaCTConfig:
    """The layer without fast weights and with attention over `window` keys, its feed-forward
    widened by the TTT branch's parameters (a SwiGLU unit of hidden width holds 3 x dim), so that
    the matched baselines (sliding-window, or standard with a window covering the sequence) have
    LaCT's parameter count to within one hidden unit per layer."""
    count = lambda c: sum(p.numel() for p in LaCTLayer(c).parameters())  # noqa: E731
    bare = replace(config, fast_weights=False, window=window)
    hidden = round(config.mlp_ratio * config.dim) + round((count(config) - count(bare)) / (3 * config.dim))
    return replace(bare, mlp_ratio=hidden / config.dim)


class ChunkProcessor:
    """Runs `layers` over a stream of pieces [b, n, dim] of any length, carrying each layer's state
    (fast weights, unfinished chunk, attention keys), so that the outputs equal those of the whole
    sequence at once. Needs lookahead = 0: a future key has not arrived yet."""

    def __init__(self, layers: nn.ModuleList | list[LaCTLayer]):
        layers = list(layers)
        ahead = [l.config.lookahead for l in layers if l.config.lookahead]
        if ahead:
            raise ValueError(f"lookahead={ahead[0]}: streaming needs lookahead=0 (causal layers); process the "
                             "whole sequence at once instead")
        self.layers = layers
        self.states = [LayerState() for _ in layers]

    @property
    def position(self) -> int:
        return self.states[0].position if self.states else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.layers[0].config.dim:
            raise ValueError(f"a piece is [batch, length, {self.layers[0].config.dim}]; got {tuple(x.shape)}")
        for i, layer in enumerate(self.layers):
            x, self.states[i] = layer(x, self.states[i])
        return x


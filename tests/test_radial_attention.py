"""Radial attention: the mask is the stated rule, every kernel equals attention under that mask
(padding, grouped heads and cached decoding rows included), a window covering the track is plain
attention, bad settings name their fix, and the DiT patch installs and restores exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from accelerando.attention.radial import (
    RadialConfig,
    block_plan,
    radial_attention,
    radial_mask,
)
from accelerando.attention.radial_processors import (
    RadialAttnProcessor,
    apply_radial_attention,
    radial_attention_patch,
    remove_radial_attention,
)
from accelerando.models.stable_audio_conditioning import rotary

# bar of 10 tokens, window 3, bands of half-width 2, 1, 0 (decay 0.5) at 10, 20, 30 tokens
SMALL = RadialConfig(window_s=3.0, bars_back=3, bar_frames=10, band_width_s=2.0, band_decay=0.5, sink_tokens=1,
                     frame_rate=1.0, block_size=8)


def rule_by_hand(config: RadialConfig, q: int, k: int) -> bool:
    """The rule as the module docstring states it, one pair at a time."""
    if config.causal and k > q:
        return False
    if q < config.sink_tokens or k < config.sink_tokens:
        return True
    d = abs(q - k)
    if d <= config.window:
        return True
    half = config.band_width_s * config.frame_rate
    for j in range(1, config.bars_back + 1):
        if abs(d - round(j * config.bar)) <= round(half * config.band_decay ** (j - 1)):
            return True
    return False


def masked_softmax_attention(q, k, v, mask):
    """Reference attention written out: softmax over the allowed keys, zeros where none is."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return (weights @ v.double()).to(q.dtype)


@pytest.mark.parametrize("causal", [False, True])
def test_mask_is_the_rule(causal):
    config = SMALL if not causal else RadialConfig(**{**SMALL.__dict__, "causal": True})
    n = 90
    mask = radial_mask(n, n, config)
    expected = torch.tensor([[rule_by_hand(config, q, k) for k in range(n)] for q in range(n)])
    assert torch.equal(mask, expected)
    assert config.bands == [(10, 2), (20, 1), (30, 0)] and config.reach == 30
    # far from the ends every query sees the same number of keys, whatever the length
    row = mask[40]
    assert int(row.sum()) == config.keys_per_query()
    assert not mask[40, 40 + 5] and mask[40, 40 - 10 + 2] and not mask[40, 40 - 10 + 3]


def _qkv(batch, heads, kv_heads, n_q, n_k, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n_q, dim, generator=g, dtype=dtype),
            torch.randn(batch, kv_heads, n_k, dim, generator=g, dtype=dtype),
            torch.randn(batch, kv_heads, n_k, dim, generator=g, dtype=dtype))


@pytest.mark.parametrize("config", [
    SMALL,
    RadialConfig(**{**SMALL.__dict__, "causal": True, "sink_tokens": 2, "block_size": 5}),
    RadialConfig(**{**SMALL.__dict__, "sink_tokens": 0, "band_decay": 1.0, "block_size": 64}),
    RadialConfig(window_s=0.5, bars_back=2, bpm=120, beats_per_bar=3, band_width_s=0.1, block_size=7),
])
def test_block_kernel_equals_attention_under_the_mask(config):
    n = 83  # not a multiple of any block size
    q, k, v = _qkv(2, 4, 2, n, n)
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, 40:] = False  # the second item is shorter: without sinks its last rows see no key at all
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    mask = radial_mask(n, n, config)[None, None] & padding[:, None, None, :]
    expected = masked_softmax_attention(q, kr, vr, mask)
    for kernel in ("dense", "blocks"):
        out = radial_attention(q, k, v, config, kernel=kernel, key_padding_mask=padding)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4, msg=f"kernel {kernel}")
        out = radial_attention(q, k, v, config, kernel=kernel)
        torch.testing.assert_close(out, masked_softmax_attention(q, kr, vr, radial_mask(n, n, config)),
                                   atol=2e-5, rtol=1e-4, msg=f"kernel {kernel}, no padding")


def test_cached_decoding_rows_match_the_full_mask():
    config = RadialConfig(**{**SMALL.__dict__, "causal": True})
    n = 75
    q, k, v = _qkv(1, 2, 2, n, n, seed=3)
    full = radial_attention(q, k, v, config, kernel="dense")
    for start, rows in [(n - 1, 1), (40, 6), (0, 3)]:
        part = radial_attention(q[:, :, start:start + rows], k[:, :, :start + rows], v[:, :, :start + rows], config,
                                kernel="blocks", query_start=start)
        torch.testing.assert_close(part, full[:, :, start:start + rows], atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="needs its own key"):
        radial_attention(q[:, :, -1:], k[:, :, :10], v[:, :, :10], config, query_start=n - 1)


def test_a_window_over_the_whole_track_is_plain_attention_and_bf16_stays_close():
    config = RadialConfig(window_s=200.0, bars_back=0, frame_rate=1.0, block_size=16)
    q, k, v = _qkv(1, 3, 3, 100, 100, seed=1)
    torch.testing.assert_close(radial_attention(q, k, v, config), F.scaled_dot_product_attention(q, k, v),
                               atol=2e-5, rtol=1e-4)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out = radial_attention(qb, kb, vb, SMALL)
    assert out.dtype == torch.bfloat16
    ref = radial_attention(q, k, v, SMALL, kernel="dense")
    assert (out.float() - ref).abs().max() < 0.05


def test_plan_grows_linearly_with_the_track():
    config = RadialConfig(window_s=1.0, bars_back=4, bpm=120, band_width_s=0.25, block_size=32)
    sizes = {n: block_plan(config, n, n)["index"].numel() for n in (2_000, 20_000)}
    assert sizes[20_000] == pytest.approx(10 * sizes[2_000], rel=0.01)
    assert config.keys_per_query() < 200 < 20_000


@pytest.mark.parametrize("causal", [False, True])
def test_flex_kernel_equals_the_mask(causal):
    pytest.importorskip("torch.nn.attention.flex_attention")
    config = RadialConfig(**{**SMALL.__dict__, "block_size": 32, "causal": causal, "sink_tokens": 2})
    n = 90  # not a multiple of the block
    q, k, v = _qkv(2, 4, 2, n, n, seed=5)
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, 70:] = False
    for kp in (None, padding):
        out = radial_attention(q, k, v, config, kernel="flex", key_padding_mask=kp)
        torch.testing.assert_close(out, radial_attention(q, k, v, config, kernel="dense", key_padding_mask=kp),
                                   atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("bad, fix", [
    (dict(window_s=-1.0), "at least one frame"),
    (dict(window_s=0.01), "at least one frame"),
    (dict(bpm=0.0), "between 20 and 400"),
    (dict(bpm=500.0), "bars_back=0"),
    (dict(bars_back=1.5), "whole number >= 0"),
    (dict(band_decay=1.5), "never widen"),
    (dict(sink_tokens=-1), "keep 1"),
    (dict(bar_frames=0.5), "at least one token"),
    (dict(frame_rate=0.0), "token rate"),
    (dict(beats_per_bar=0), "6/8"),
    (dict(block_size=0), ">= 1"),
])
def test_bad_settings_name_the_fix(bad, fix):
    with pytest.raises(ValueError, match=fix):
        RadialConfig(**bad)


def test_bad_inputs_name_the_fix():
    q, k, v = _qkv(1, 3, 2, 10, 10)
    with pytest.raises(ValueError, match="divide"):
        radial_attention(q, k, v, SMALL)
    q, k, v = _qkv(1, 2, 2, 10, 10)
    with pytest.raises(ValueError, match="kernel="):
        radial_attention(q, k, v, SMALL, kernel="magic")
    with pytest.raises(ValueError, match="bool"):
        radial_attention(q, k, v, SMALL, key_padding_mask=torch.ones(1, 10))


def test_tempo_and_metre_from_a_caption():
    config = RadialConfig.from_caption("a waltz in 3/4 for strings at 90 BPM in G major")
    assert config.bpm == pytest.approx(90.0) and config.beats_per_bar == 3
    assert config.bar == pytest.approx(2.0 * config.frame_rate)
    assert RadialConfig.from_caption("ambient drone").bpm == RadialConfig().bpm
    assert RadialConfig.from_caption("a march at 120 BPM", window_s=0.5).window_s == 0.5


def _forward(pipe, frames: int = 40) -> torch.Tensor:
    tr = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, tr.config.in_channels, frames, generator=gen)
    enc = torch.randn(1, 5, tr.config.cross_attention_input_dim, generator=gen)
    glob = torch.randn(1, 1, tr.config.global_states_input_dim, generator=gen)
    with torch.no_grad():
        return tr(x, torch.tensor([0.4]), encoder_hidden_states=enc, global_hidden_states=glob,
                  rotary_embedding=rotary(pipe, frames), return_dict=False)[0]


def test_dit_patch_installs_on_self_attention_and_restores_exactly(tiny_lite_pipe):
    tr = tiny_lite_pipe.transformer
    stock = tr.attn_processors
    reference = _forward(tiny_lite_pipe)
    everything = RadialConfig(window_s=1000.0, bars_back=0)
    with radial_attention_patch(tr, everything):
        assert all(isinstance(p, RadialAttnProcessor) == name.endswith("attn1.processor")
                   for name, p in tr.attn_processors.items())
        torch.testing.assert_close(_forward(tiny_lite_pipe), reference, atol=1e-5, rtol=1e-4)
    assert all(tr.attn_processors[k] is p for k, p in stock.items())

    narrow = RadialConfig(window_s=0.1, bars_back=1, bpm=120, band_width_s=0.05)
    saved = apply_radial_attention(tr, narrow, layers={0})
    chosen = [name for name, p in tr.attn_processors.items() if isinstance(p, RadialAttnProcessor)]
    assert chosen == ["transformer_blocks.0.attn1.processor"]
    changed = _forward(tiny_lite_pipe)
    assert torch.isfinite(changed).all() and not torch.allclose(changed, reference, atol=1e-4)
    remove_radial_attention(tr, saved)
    assert torch.equal(_forward(tiny_lite_pipe), reference)

    with pytest.raises(ValueError, match="global token"):
        apply_radial_attention(tr, RadialConfig(sink_tokens=0))
    assert all(tr.attn_processors[k] is p for k, p in stock.items())


def test_benchmark_rows_are_interleaved_ratios_with_the_configuration(capsys):
    from accelerando.bench.__main__ import main
    from accelerando.bench.radial import attention_layer_rows, block_rows, exactness_rows

    config = RadialConfig(window_s=0.5, bars_back=2, bpm=120, band_width_s=0.1, block_size=16)
    rows = attention_layer_rows([0.1], config, ("blocks",), heads=2, rounds=3)
    assert {r["kernel"] for r in rows} == {"dense", "blocks"}
    radial = next(r for r in rows if r["kernel"] == "blocks")
    assert radial["repeats"] == 3 and radial["speedup_vs_baseline"] > 0
    assert radial["keys_per_query"] == config.keys_per_query() < radial["tokens"]
    assert all(r["max_abs_error"] < 1e-4 for r in exactness_rows(config, tokens=300) if r["dtype"] == "float32")
    tiny = dict(num_attention_heads=2, attention_head_dim=16, num_key_value_attention_heads=1, cross_attention_dim=24)
    block = block_rows([0.1], config, tiny, rounds=3, text_tokens=5, dtype=torch.float32)
    assert [r["kernel"] for r in block] == ["dense", "blocks"] and 0 < block[1]["relative_output_change"] < 1
    with pytest.raises(ValueError, match="at least 3"):
        attention_layer_rows([0.1], config, rounds=2)

    assert main(["radial", "--minutes", "0.05", "--block-minutes", "--rounds", "3", "--json"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any('"attention_layer"' in line for line in printed)


def test_tempo_from_an_audio_prompt_and_refusals():
    from test_generation_metrics import SR, clicks

    config = RadialConfig.from_audio(clicks(120.0), SR, window_s=0.5)
    assert config.window_s == 0.5
    assert min(abs(config.bpm * f / 120.0 - 1) for f in (0.5, 1.0, 2.0)) < 0.05  # up to the metrical level
    with pytest.raises(ValueError, match="silen"):
        RadialConfig.from_audio(torch.zeros(1, SR * 4), SR)

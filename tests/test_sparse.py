"""WP2 SIGE-Audio: sparse re-decoding is exact, sparse DiT steps reduce to dense ones, edits hold the
rest of the track, and bad requests are refused with the fix."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
from accelerando.models.latent_grouping import decoder_hop, latent_channels
from accelerando.models.stable_audio import build_stable_audio
from accelerando.models.stable_audio_lite import generate
from accelerando.sparse import CachedDecoder, EditSession, decode_window, measured_reach, receptive_field
from accelerando.attention import KeyValueCache
from accelerando.models.stable_audio_conditioning import rotary
from accelerando.sparse.dit import dit_forward


@pytest.fixture(scope="module", params=[4, 1], ids=["grouped", "stock"])
def vae(request):
    """The tiny autoencoder with 4 encoder frames per latent frame (the book's layout) and without."""
    torch.manual_seed(0)
    return build_autoencoder_lite({**AUTOENCODER_TINY_CONFIG, "latent_frame_group": request.param}).eval()


def _decode(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample


@pytest.mark.parametrize("regions", [[(0, 3)], [(37, 38)], [(60, 64)], [(5, 9), (40, 52)], [(0, 64)]])
def test_sparse_decode_equals_full_decode(vae, regions):
    """Random edits, the track's ends included, several at once: cached and windowed re-decoding
    both give the full decode's samples to float rounding."""
    gen = torch.Generator().manual_seed(len(regions))
    c = latent_channels(vae)
    z = torch.randn(2, c, 64, generator=gen)
    dec = CachedDecoder(vae)
    assert torch.allclose(dec.decode(z), _decode(vae, z), atol=1e-6)
    z2 = z.clone()
    for a, b in regions:
        z2[..., a:b] = torch.randn(2, c, b - a, generator=gen)
    full = _decode(vae, z2)
    scale = full.abs().max()
    assert (dec.update(z2) - full).abs().max() <= 1e-5 * scale
    assert dec.last_update["frames"] == regions
    win = decode_window(vae, z2, 1000, 9000)
    assert (win - full[..., 1000:9000]).abs().max() <= 1e-5 * scale
    edge = decode_window(vae, z2, full.shape[-1] - 3000, full.shape[-1])  # the track's end
    assert (edge - full[..., -3000:]).abs().max() <= 1e-5 * scale
    # a second edit on top of the first: the cache follows the track
    z3 = z2.clone()
    z3[..., 30:31] += 1
    after_first = dec.maps[-1].clone()
    assert (dec.update(z3) - _decode(vae, z3)).abs().max() <= 1e-5 * scale
    # undo walks back through both edits exactly: every map, not just the audio
    assert torch.equal(dec.undo(), after_first) and torch.equal(dec.latents, z2)
    dec.undo()
    assert torch.equal(dec.latents, z) and torch.equal(dec.maps[-1], _decode_cached(vae, z))
    with pytest.raises(RuntimeError, match="nothing to undo"):
        dec.undo()


def _decode_cached(vae, z):
    return CachedDecoder(vae).decode(z)


def test_unedited_samples_outside_the_reach_are_bit_identical(vae):
    z = torch.randn(1, latent_channels(vae), 64)
    dec = CachedDecoder(vae)
    before = dec.decode(z)
    z2 = z.clone()
    z2[..., 30:34] = 0
    after = dec.update(z2)
    (lo, hi), = dec.last_update["samples"]
    assert torch.equal(before[..., :lo], after[..., :lo]) and torch.equal(before[..., hi:], after[..., hi:])
    assert not torch.equal(before[..., lo:hi], after[..., lo:hi])


def test_decoder_speed_times_without_undo_tiles_and_counts_them_per_kept_edit(vae):
    from accelerando.bench.sparse import decoder_speed

    rows = decoder_speed(vae, 64, [0.1, 0.25], rounds=1, warmup=0)
    maps = sum(m.numel() * m.element_size() for m in _cached_maps(vae, 64))
    for r in rows:
        assert r["outside_reach_unchanged"] and r["cached_max_error_rel"] < 1e-5
        assert r["cache_bytes"] == maps  # the timed edits kept no undo tiles
        assert 0 < r["undo_bytes"] < maps  # a kept edit holds only the tiles it overwrote
    assert rows[0]["undo_bytes"] < rows[1]["undo_bytes"]


def _cached_maps(vae, frames: int) -> list[torch.Tensor]:
    dec = CachedDecoder(vae)
    dec.decode(torch.randn(1, latent_channels(vae), frames))
    return dec.maps


def test_receptive_field_from_the_index_algebra_matches_a_measured_impulse(vae):
    """Perturb one latent frame: the samples that change lie inside the derived reach, and reach
    (within one hop) its ends: the algebra is neither wrong nor loose."""
    rf = receptive_field(vae)
    seen = measured_reach(vae, frames=64)
    for side in ("left", "right"):
        assert 0 <= seen[f"{side}_samples"] <= rf[f"spread_samples_{side}"]
        assert rf[f"spread_samples_{side}"] - seen[f"{side}_samples"] < decoder_hop(vae)  # one decoder frame


def test_decoder_refuses_bad_latents(vae):
    dec, c = CachedDecoder(vae), latent_channels(vae)
    with pytest.raises(RuntimeError, match="decode"):
        dec.update(torch.zeros(1, c, 16))
    with pytest.raises(ValueError, match="NaN"):
        dec.decode(torch.full((1, c, 16), float("nan")))
    with pytest.raises(ValueError, match=f"{c} channels"):
        dec.decode(torch.zeros(1, c - 1, 16))
    dec.decode(torch.zeros(1, c, 16))
    with pytest.raises(ValueError, match="new track"):
        dec.update(torch.zeros(1, c, 20))
    with pytest.raises(ValueError, match="inside"):
        decode_window(vae, torch.zeros(1, c, 16), 0, 10**9)


def test_dit_forward_dense_equals_stock_and_sparse_over_everything_equals_dense(tiny_lite_pipe):
    tr = tiny_lite_pipe.transformer
    gen = torch.Generator().manual_seed(0)
    T = tr.config.sample_size
    x = torch.randn(2, tr.config.in_channels, T, generator=gen)
    enc = torch.randn(2, 7, tr.config.cross_attention_input_dim, generator=gen)
    glob = torch.randn(2, 1, tr.config.global_states_input_dim, generator=gen)
    rot, t = rotary(tiny_lite_pipe, T), torch.tensor([0.3])
    with torch.no_grad():
        stock = tr(x, t, encoder_hidden_states=enc, global_hidden_states=glob, rotary_embedding=rot, return_dict=False)[0]
        before = tr.attn_processors
        cache = KeyValueCache.install(tr)
        try:
            dense = dit_forward(tr, cache, x, t, enc, glob, rot)
            every = dit_forward(tr, cache, x, t, enc, glob, rot, frames=torch.arange(T))
            part = dit_forward(tr, cache, x, t, enc, glob, rot, frames=torch.arange(3, 9))
        finally:
            cache.remove(tr)
    assert all(tr.attn_processors[k] is p for k, p in before.items())  # the stock processors are back
    assert torch.allclose(dense, stock, atol=1e-6)
    assert torch.allclose(every, dense, atol=1e-6)
    assert torch.allclose(part, dense[..., 3:9], atol=1e-6)  # same input: cached K/V are exact


def test_session_generates_what_the_pipeline_generates(tiny_lite_pipe):
    ref, sr = generate(tiny_lite_pipe, "a chorale in D major", seconds=0.6, steps=4, seed=2)
    session = EditSession(tiny_lite_pipe, steps=4)
    audio = session.generate("a chorale in D major", seconds=0.6, seed=2)
    assert audio.shape == ref.shape and np.allclose(audio, ref, atol=1e-6)


def test_edits_hold_the_rest_and_sparse_reduces_to_dense(tiny_lite_pipe):
    session = EditSession(tiny_lite_pipe, steps=4)
    before = session.generate(["a chorale in D major", "a drum groove"], seconds=0.7, seed=0)
    dense = session.edit(0.2, 0.35, prompt=["a snare fill", "a bass line"], mode="dense", seed=7)
    (lo, hi), = session.decoder.last_update["samples"]
    assert np.array_equal(dense[..., :lo], before[..., :lo]) and np.array_equal(dense[..., hi:], before[..., hi:])
    assert not np.allclose(dense[..., lo:hi], before[..., lo:hi])
    assert session.latents.shape[0] == 2
    undone = session.undo()
    assert np.array_equal(undone, before)  # the overwritten tiles come back, bit for bit
    # a dense pass at every step is the dense edit, through the sparse code path
    every = session.edit(0.2, 0.35, prompt=["a snare fill", "a bass line"], mode="sparse", refresh_every=1, seed=7)
    assert np.allclose(every, dense, atol=1e-6)
    session.undo()
    sparse = session.edit(0.2, 0.35, prompt=["a snare fill", "a bass line"], mode="sparse", refresh_every=0, seed=7)
    assert np.isfinite(sparse).all() and session.last_edit["sparse_steps"] == 4
    assert np.array_equal(sparse[..., :lo], before[..., :lo])
    # strength < 1 starts later in the schedule
    session.edit(0.1, 0.2, strength=0.5, seed=3)
    assert session.last_edit["begin_step"] == 2 and len(session.takes[-1].trajectory) == 5


def test_corrected_kv_is_the_record_plus_the_last_dense_difference(tiny_lite_pipe):
    """Steps 0 and 2 dense, 1 and 3 sparse: at a sparse step the tokens outside the active set
    attend to record(i) + dense(j) - record(j) (the merged K/V the edit's own record keeps)."""
    session = EditSession(tiny_lite_pipe, steps=4)
    session.generate("a chorale in D major", seconds=0.7, seed=0)
    session.edit(0.3, 0.4, prompt="a snare fill", refresh_every=2, kv_correction=True, margin=1, seed=5)
    assert session.last_edit["dense_steps"] == 2 and session.last_edit["sparse_steps"] == 2
    base, new = session.takes[0].kv, session.takes[1].kv
    a, b = session.takes[1].meta["region_frames"]
    outside = torch.ones(base[0][0][0].shape[2], dtype=torch.bool)
    outside[0] = False  # the global token, always active
    outside[1 + a - 1:1 + b + 1] = False  # token 1 + f is frame f; margin 1 each side
    for sparse_step, dense_step in ((1, 0), (3, 2)):
        for part in (0, 1):  # keys, values
            for layer in range(len(base[0][0])):
                want = base[sparse_step][part][layer] + new[dense_step][part][layer] - base[dense_step][part][layer]
                got = new[sparse_step][part][layer]
                assert torch.allclose(got[:, :, outside], want[:, :, outside], atol=1e-6)
    # the difference is not zero: tokens outside the region see the edit from the first layer on
    assert not torch.allclose(new[0][0][-1][:, :, outside], base[0][0][-1][:, :, outside])


def test_bf16_record_halves_the_bytes_and_edits(tiny_lite_pipe):
    full = EditSession(tiny_lite_pipe, steps=2)
    half = EditSession(tiny_lite_pipe, steps=2, record_dtype=torch.bfloat16)
    ref = full.generate("a drum groove", seconds=0.6, seed=1)
    audio = half.generate("a drum groove", seconds=0.6, seed=1)
    assert np.array_equal(audio, ref)  # the record is kept beside the generation, not in it
    nbytes = lambda s: sum(t.numel() * t.element_size() for step in s.takes[0].kv for part in step for t in part)  # noqa: E731
    assert half.takes[0].kv[0][0][0].dtype == torch.bfloat16 and 2 * nbytes(half) == nbytes(full)
    for session in (full, half):
        session.edit(0.2, 0.4, refresh_every=0, seed=3)
    assert np.allclose(half.undo(), ref) and np.isfinite(half.takes[-1].trajectory[-1]).all()
    with pytest.raises(ValueError, match="record_dtype"):
        EditSession(tiny_lite_pipe, record_dtype=torch.int8)


def test_sparse_dit_step_on_a_one_layer_slice_of_the_full_size_config():
    """The published DiT's exact config (24 query heads, 12 key/value heads of 64, 1536 wide,
    768-wide cross-attention) cut to one block: the cache's grouped-query and partial-rotary path
    at full width reduces to the stock forward, and a sparse pass to the dense one."""
    from diffusers import StableAudioDiTModel

    from accelerando.models.stable_audio import TRANSFORMER_CONFIGS

    config = {**TRANSFORMER_CONFIGS["full"], "num_layers": 1}
    torch.manual_seed(0)
    tr = StableAudioDiTModel(**config).eval()
    assert (tr.config.num_attention_heads, tr.config.num_key_value_attention_heads, tr.config.attention_head_dim,
            tr.config.cross_attention_dim) == (24, 12, 64, 768)
    gen = torch.Generator().manual_seed(0)
    T = 24  # frames: any length runs the same code; the full 1024 would only cost time
    x = torch.randn(2, config["in_channels"], T, generator=gen)
    enc = torch.randn(2, 130, config["cross_attention_input_dim"], generator=gen)  # 128 T5 tokens + 2 timing
    glob = torch.randn(2, 1, config["global_states_input_dim"], generator=gen)
    rot = rotary(SimpleNamespace(transformer=tr), T)
    t = torch.tensor([0.7])
    with torch.no_grad():
        stock = tr(x, t, encoder_hidden_states=enc, global_hidden_states=glob, rotary_embedding=rot, return_dict=False)[0]
        cache = KeyValueCache.install(tr)
        try:
            dense = dit_forward(tr, cache, x, t, enc, glob, rot)
            part = dit_forward(tr, cache, x, t, enc, glob, rot, frames=torch.arange(5, 11))
        finally:
            cache.remove(tr)
    scale = stock.abs().max()
    assert (dense - stock).abs().max() <= 1e-5 * scale
    assert (part - dense[..., 5:11]).abs().max() <= 1e-5 * scale


def test_session_runs_on_stable_audio_open_classes_at_tiny_size():
    """EditSession on the full-size model's classes (T5 conditioning, 44.1 kHz stereo Oobleck,
    grouped-query DiT) in their tiny preset, random weights."""
    pipe = build_stable_audio("tiny")
    session = EditSession(pipe, steps=2, keep_kv=False)
    audio = session.generate("a chorale", seconds=1.0, seed=0)
    edited = session.edit(0.3, 0.6, refresh_every=2)
    assert audio.shape == edited.shape == (1, 2, 44100)
    assert session.last_edit["dense_steps"] == 1 and session.last_edit["sparse_steps"] == 1


def test_bad_edit_requests_name_the_fix(tiny_lite_pipe):
    session = EditSession(tiny_lite_pipe, steps=2)
    with pytest.raises(RuntimeError, match="generate"):
        session.edit(0.1, 0.2)
    with pytest.raises(RuntimeError, match="undo"):
        session.undo()
    session.generate("music", seconds=0.6)
    for args, kwargs, match in [
        ((0.5, 0.9), {}, "outside"),
        ((-0.1, 0.2), {}, "outside"),
        ((0.3, 0.3), {}, "empty or reversed"),
        ((0.4, 0.2), {}, "empty or reversed"),
        ((0.1, 0.11), {}, "one latent frame"),
        ((0.1, 0.3), {"mode": "fast"}, "mode"),
        ((0.1, 0.3), {"strength": 0.0}, "strength"),
        ((0.1, 0.3), {"prompt": ""}, "empty"),
        ((0.1, 0.3), {"prompt": ["a", "b"]}, "one per track"),
    ]:
        with pytest.raises(ValueError, match=match):
            session.edit(*args, **kwargs)
    light = EditSession(tiny_lite_pipe, steps=2, keep_kv=False)
    light.generate("music", seconds=0.6)
    with pytest.raises(ValueError, match="keep_kv"):
        light.edit(0.1, 0.3, refresh_every=0)
    with pytest.raises(ValueError, match="keep_kv"):
        light.edit(0.1, 0.3, refresh_every=2, kv_correction=True)
    with pytest.raises(ValueError, match="refresh_every >= 1"):
        session.edit(0.1, 0.3, refresh_every=0, kv_correction=True)
    original = tiny_lite_pipe.scheduler
    try:
        from diffusers import CosineDPMSolverMultistepScheduler

        tiny_lite_pipe.scheduler = CosineDPMSolverMultistepScheduler(**{**original.config, "sigma_max": 100.0})
        with pytest.raises(RuntimeError, match="changed"):
            session.edit(0.1, 0.3)
    finally:
        tiny_lite_pipe.scheduler = original


@pytest.fixture(scope="module")
def musicgen_tree():
    from accelerando.models.musicgen import build_musicgen
    from accelerando.editing import PrefixTree

    model = build_musicgen("tiny")
    text = torch.randint(0, model.text_encoder.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    return model, PrefixTree(model, text)


def test_prefix_cache_gives_the_logits_of_recomputation(musicgen_tree):
    """Branch twice (an edit of an edit): the stored prefix keys/values, sliced along the path,
    give the logits and keys of decoding the branch's whole sequence in one uncached forward."""
    model, tree = musicgen_tree
    root = tree.generate(16, seed=0)
    edit = tree.branch(root, at=9, seed=1)
    again = tree.branch(edit, at=12, seed=2)
    ids = tree._inputs(again, again.end)
    assert ids.shape == (2 * 4, 17)
    assert torch.equal(ids[:, 1:10], tree.tokens(root)[:, :9]) and torch.equal(ids[:, 10:13], tree.tokens(edit)[:, 9:12])
    with torch.no_grad():
        full = model(encoder_outputs=tree.encoder_outputs, decoder_input_ids=ids[:, :-1], use_cache=True)
        cached = model(encoder_outputs=tree.encoder_outputs, decoder_input_ids=ids[:, 12:-1],
                       past_key_values=tree._cache_for(again, 12), use_cache=True)
    assert torch.allclose(cached.logits, full.logits[:, 12:], atol=1e-5)
    stored = tree._cache_for(again, again.end).self_attention_cache
    for mine, ref in zip(stored.layers, full.past_key_values.self_attention_cache.layers):
        assert torch.allclose(mine.keys, ref.keys, atol=1e-5) and torch.allclose(mine.values, ref.values, atol=1e-5)
    # same seed, with or without the stored prefix: the same tokens
    a = tree.branch(root, at=5, seed=3, temperature=0.0)
    b = tree.branch(root, at=5, seed=3, temperature=0.0, reuse=False)
    assert torch.equal(a.tokens, b.tokens)
    assert tree.nbytes() < tree.unshared_nbytes()


def test_prefix_tree_refuses_bad_branches(musicgen_tree):
    _, tree = musicgen_tree
    root = tree.generate(4, seed=0)
    with pytest.raises(ValueError, match="inside"):
        tree.branch(root, at=4)
    with pytest.raises(ValueError, match="inside"):
        tree.branch(root, at=0)
    with pytest.raises(ValueError, match="positions"):
        tree.branch(root, at=2, frames=10**6)
    with pytest.raises(ValueError, match="at least one"):
        tree.generate(0)


def test_speed_fidelity_points_pair_each_variant_with_its_projected_speed():
    import pandas as pd

    from accelerando.bench.sparse import project_speedup, speed_fidelity_points

    rows = []
    for prompt in range(6):
        rows.append({"fraction": 0.1, "variant": "dense, other seed", "mrstft_to_dense": 1.0 + 0.01 * prompt,
                     "refresh_every": None, "margin": None, "kv_correction": False})
        for variant, k, m, corr, dist in [("sparse k=0", 0, 8, False, 1.5), ("sparse k=5", 5, 8, False, 0.5),
                                          ("sparse k=0 m=32", 0, 32, False, 1.2), ("sparse k=25 corrected", 25, 8, True, 0.4)]:
            rows.append({"fraction": 0.1, "variant": variant, "mrstft_to_dense": dist + 0.01 * prompt,
                         "refresh_every": k, "margin": m, "kv_correction": corr})
    measured = dict(refresh_every=0, dense_step_s=1.0, sparse_step_s=0.1, edit_decode_s=1.0, regenerate_other_s=5.0,
                    edit_frames=100, margin=8)
    e2e = {"record": {**measured, "kv_correction": False},
           "corrected": {**measured, "kv_correction": True, "sparse_step_s": 0.12}}
    points = speed_fidelity_points(pd.DataFrame(rows), e2e, 0.1, lite_steps=25, steps=100, n_resamples=50)
    assert list(points.index) == ["sparse k=0", "sparse k=5", "sparse k=0 m=32", "sparse k=25 corrected"]
    assert not points.loc["sparse k=0", "inside_floor"] and points.loc["sparse k=5", "inside_floor"]
    # k=5 of 25 steps keeps its share of dense steps at 100 steps: every 20th
    assert points.loc["sparse k=5", "projected_speedup"] == pytest.approx(project_speedup(e2e["record"], 100, 20))
    # a wider margin costs its frames in every sparse step; the corrected variant uses the corrected record
    assert points.loc["sparse k=0 m=32", "projected_speedup"] < points.loc["sparse k=0", "projected_speedup"]
    assert points.loc["sparse k=25 corrected", "projected_speedup"] == pytest.approx(
        project_speedup(e2e["corrected"], 100, 100))

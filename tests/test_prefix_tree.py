"""The KV-cache tree on MusicGen-Lite (A and B, with CFG): stored prefixes give the logits of
recomputation, branches keep their parents' codes, the root is the model's own generation, memory
is counted once per shared part, and bad requests are refused."""

from __future__ import annotations

import pytest
import torch

from accelerando.models.musicgen_lite import (
    TINY_CONFIG,
    MusicGenLite,
    MusicGenLiteConfig,
    inputs_and_labels,
    generate,
    null_condition,
)
from accelerando.editing import PrefixTree

GUIDANCE, TOP_K = 2.5, 6
SPECIAL = TINY_CONFIG["codebook_size"]


def tiny(variant: str, seed: int = 0) -> MusicGenLite:
    torch.manual_seed(seed)
    return MusicGenLite(MusicGenLiteConfig(variant=variant, **TINY_CONFIG)).eval()


def condition(b: int = 2, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, length, TINY_CONFIG["text_dim"], generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[-1, 3:] = 0  # a shorter prompt in the batch
    prompt = torch.randint(0, SPECIAL, (b, TINY_CONFIG["codebooks"], 4), generator=g)
    return states, mask, prompt


@pytest.fixture(scope="module", params=["a", "b"])
def lite(request):
    """(model, states, mask, prompt codes or None, tree) for variant A (text prefix) and B (text +
    audio prompt cross-attention), both with guidance."""
    model = tiny(request.param)
    states, mask, prompt = condition()
    prompt = prompt if request.param == "b" else None
    return model, states, mask, prompt, PrefixTree.for_musicgen_lite(model, states, mask, prompt, guidance=GUIDANCE)


def guided_rows(states, mask, prompt):
    """The [cond; uncond] rows CFG decodes, built here independently of the tree."""
    null_states, null_mask = null_condition(states, mask)
    rows = (torch.cat([states, null_states]), torch.cat([mask, null_mask]))
    if prompt is None:
        return rows + (None, None)
    b, p = prompt.shape[0], prompt.shape[-1]
    pmask = torch.cat([torch.ones(b, p, dtype=mask.dtype), torch.zeros(b, p, dtype=mask.dtype)])
    return rows + (torch.cat([prompt, prompt]), pmask)


def test_stored_prefix_gives_the_logits_of_recomputation(lite):
    """An edit of an edit: the logits the tree decoded with at every new step, and the keys/values
    it stored along the path, equal one uncached forward over the whole path's inputs."""
    model, states, mask, prompt, tree = lite
    root = tree.generate(14, seed=0, top_k=TOP_K)
    edit = tree.branch(root, at=6, seed=1, top_k=TOP_K)
    tree.adapter.keep_logits = True
    try:
        again = tree.branch(edit, at=10, seed=2, top_k=TOP_K)
        decoded = tree.adapter.last_logits  # [2B, K, steps 10 .. 10 + 4 + K - 2, V]
    finally:
        tree.adapter.keep_logits = False
    codes = tree.codes(again)
    assert codes.shape == (2, 2, 14)
    assert torch.equal(codes[..., :6], tree.codes(root)[..., :6]) and torch.equal(codes[..., 6:10], edit.tokens[..., :4])
    inputs, _ = inputs_and_labels(codes, special=SPECIAL)  # [B, K, 14 + K - 1] steps
    rows = guided_rows(states, mask, prompt)
    with torch.no_grad():
        full = model(torch.cat([inputs, inputs]), *rows)  # [2B, K, steps, V], no cache
        assert decoded.shape == full[:, :, 10:].shape
        assert torch.allclose(decoded, full[:, :, 10:], atol=1e-5)
        # the prefix cache sliced along the path, then the rest of the steps in one call
        cached = model(torch.cat([inputs, inputs])[..., 10:], *rows, cache=tree._cache_for(again, 10), past_steps=10)
        assert torch.allclose(cached, full[:, :, 10:], atol=1e-5)
        # the stored keys/values of audio positions [0, 14) against a one-shot prefill's
        reference = model.new_cache()
        model(torch.cat([inputs, inputs]), *rows, cache=reference)
    ref_layers = reference.layers if model.config.variant == "a" else reference.self_attention_cache.layers
    offset = states.shape[1] if model.config.variant == "a" else 0  # model A's text positions come first
    for (k, v), ref in zip(tree._prefix(again, 14), ref_layers):
        assert torch.allclose(k, ref.keys[:, :, offset:offset + 14], atol=1e-5)
        assert torch.allclose(v, ref.values[:, :, offset:offset + 14], atol=1e-5)


def test_branches_keep_the_prefix_and_reuse_changes_nothing(lite):
    model, states, mask, prompt, tree = lite
    root = tree.generate(12, seed=3, top_k=TOP_K)
    for at in (1, 2, 7, 11):  # at < K - 1 too: the delay pattern's opening corners are kept
        stored = tree.branch(root, at=at, seed=4, top_k=TOP_K)
        fresh = tree.branch(root, at=at, seed=4, top_k=TOP_K, reuse=False)
        assert torch.equal(tree.codes(stored)[..., :at], tree.codes(root)[..., :at])
        assert torch.equal(stored.tokens, fresh.tokens)
        assert stored.keys[0].shape == (4, 2, 12 - at, 16)  # [2B rows, heads, own frames, head_dim]
    # a longer branch than its parent, and a different seed gives other codes after `at`
    longer = tree.branch(root, at=5, frames=20, seed=4, top_k=TOP_K)
    other = tree.branch(root, at=5, seed=5, top_k=TOP_K)
    assert tree.codes(longer).shape == (2, 2, 25)
    assert not torch.equal(tree.codes(other)[..., 5:], tree.codes(longer)[..., 5:12])


def test_root_and_branches_are_the_models_own_generation(lite):
    """Same seed, guidance, top_k: the root is `generate(...)`, and a branch at t is
    `generate(..., continuation=codes[..., :t])` (one sample per step for all codebooks, forced
    ones overwritten, in the same order; the prefill with reuse=False is the same forward too)."""
    model, states, mask, prompt, tree = lite
    root = tree.generate(13, seed=7, top_k=TOP_K)
    reference, _ = generate(model, states, mask, 13, prompt_codes=prompt, guidance=GUIDANCE, top_k=TOP_K, seed=7)
    assert torch.equal(tree.codes(root), reference)
    for reuse in (False, True):
        edit = tree.branch(root, at=5, frames=9, seed=8, top_k=TOP_K, reuse=reuse)
        continued, _ = generate(model, states, mask, 14, prompt_codes=prompt, continuation=reference[..., :5],
                                guidance=GUIDANCE, top_k=TOP_K, seed=8)
        assert torch.equal(tree.codes(edit), continued)
    # without guidance: conditional rows only
    plain = PrefixTree.for_musicgen_lite(model, states, mask, prompt, guidance=1.0)
    reference, _ = generate(model, states, mask, 6, prompt_codes=prompt, guidance=1.0, top_k=TOP_K, seed=2)
    assert torch.equal(plain.codes(plain.generate(6, seed=2, top_k=TOP_K)), reference)


def test_memory_counts_each_frame_and_the_shared_part_once(lite):
    model, states, mask, prompt, _ = lite
    tree = PrefixTree.for_musicgen_lite(model, states, mask, prompt, guidance=GUIDANCE)
    assert tree.nbytes() == 0
    root = tree.generate(16, seed=0)
    alternatives = [tree.branch(root, at=10, seed=s) for s in range(3)]
    deeper = tree.branch(alternatives[0], at=13, seed=9)
    chosen = [root, *alternatives, deeper]
    cfg = model.config
    per_frame = cfg.layers * 2 * 4 * cfg.hidden_size * 4  # layers x (K, V) x 2B rows x width x fp32
    assert root.nbytes() == 16 * per_frame and deeper.nbytes() == 3 * per_frame
    if cfg.variant == "a":  # the text prefix: L positions of every layer
        shared = states.shape[1] * per_frame
    else:  # the cross-attention cache over text + audio prompt memory
        shared = (states.shape[1] + prompt.shape[-1]) * per_frame
    assert tree.adapter.shared_nbytes() == shared
    assert tree.nbytes() == sum(b.nbytes() for b in chosen) + shared
    assert tree.unshared_nbytes() == (16 * 4 + 16) * per_frame + 5 * shared
    assert tree.nbytes() < tree.unshared_nbytes()
    tree.discard(deeper)
    assert tree.nbytes() == tree.nbytes([root, *alternatives])
    with pytest.raises(ValueError, match="children"):
        tree.discard(root)


def test_bad_requests_are_refused(lite):
    model, states, mask, prompt, tree = lite
    root = tree.generate(6, seed=0)
    with pytest.raises(ValueError, match="inside"):
        tree.branch(root, at=6)
    with pytest.raises(ValueError, match="inside"):
        tree.branch(root, at=0)
    with pytest.raises(ValueError, match="at least one"):
        tree.generate(0)
    with pytest.raises(ValueError, match="at least one"):
        tree.branch(root, at=3, frames=0)
    with pytest.raises(ValueError, match="64 frame positions"):
        tree.generate(65)
    with pytest.raises(ValueError, match="64 frame positions"):
        tree.branch(root, at=3, frames=62)
    with pytest.raises(TypeError, match="ints"):
        tree.generate(4.0)
    other = PrefixTree.for_musicgen_lite(model, states, mask, prompt, guidance=GUIDANCE)
    with pytest.raises(ValueError, match="not a branch of this tree"):
        other.branch(root, at=2)
    with pytest.raises(ValueError, match="text_states"):
        PrefixTree.for_musicgen_lite(model, states[..., :3], mask)
    with pytest.raises(ValueError, match="text_mask"):
        PrefixTree.for_musicgen_lite(model, states, mask[:, :2])
    if model.config.variant == "a":
        with pytest.raises(ValueError, match="model A takes no audio prompt"):
            PrefixTree.for_musicgen_lite(model, states, mask, torch.zeros(2, 2, 3, dtype=torch.long))
    else:
        with pytest.raises(ValueError, match="prompt_codes"):
            PrefixTree.for_musicgen_lite(model, states, mask, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="MusicGenLite"):
        PrefixTree.for_musicgen_lite(torch.nn.Linear(2, 2), states, mask)


class FakeText:
    """Stands in for MiniLM: text_dim-wide states."""

    def encode(self, texts):
        g = torch.Generator().manual_seed(len(texts[0]))
        return torch.randn(len(texts), 4, TINY_CONFIG["text_dim"], generator=g), torch.ones(len(texts), 4, dtype=torch.long)


def test_the_edit_measurement_runs_and_its_checks_hold():
    """`bench.prefix.lite_prefix_edits` on a tiny random pipeline: codes before t and audio before
    the decoder's reach of t are the original's, the cached decode equals a full one."""
    from accelerando.bench.prefix import lite_prefix_edits, summarize
    from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
    from accelerando.models.codec_lite import LatentCodec, ResidualVQ
    from accelerando.models.latent_grouping import latent_channels
    from accelerando.models.musicgen_lite import MusicGenLitePipeline

    torch.manual_seed(0)
    vae = build_autoencoder_lite(AUTOENCODER_TINY_CONFIG, seed=0).eval()
    codec = LatentCodec(vae, ResidualVQ.fit(torch.randn(400, latent_channels(vae)), codebooks=2, size=16, iters=3))
    pipe = MusicGenLitePipeline(tiny("a"), codec, text_encoder=FakeText())
    rows, kept = lite_prefix_edits(pipe, ["one"], seconds=1.5, at_fractions=(0.4, 0.7), branches=3, keep_audio=1)
    assert len(rows) == 2 and set(kept) == {(0, r["at"]) for r in rows}
    for row in rows:
        assert row["codes_before_at_identical"] and row["audio_before_reach_identical"]
        assert row["cached_decode_max_error_rel"] < 1e-5 and row["tree_bytes"] < row["unshared_bytes"]
        assert 0 < row["recomputed_samples_fraction"] < 1
    summary = summarize(rows)
    assert summary["all_exact"] and summary["codes_kept"] and summary["audio_kept"] and summary["edits"] == 2
    # the tree stores less than one full cache per branch: the fraction is below 1, not its inverse
    assert 0 < summary["tree_over_unshared_memory"] < 1
    with pytest.raises(ValueError, match="at_fractions"):
        lite_prefix_edits(pipe, ["one"], seconds=2.0, at_fractions=(1.0,))

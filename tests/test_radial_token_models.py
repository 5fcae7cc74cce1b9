"""Radial attention on token models (MusicGen-Lite A and B, transformers' MusicgenAttention): a
window over everything changes nothing, cached decoding under the pattern equals recomputation and
the dense kernel, removal restores the stock logits exactly, and bad settings name the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from accelerando.attention.radial import RadialConfig
from accelerando.attention.radial_processors import apply_radial_attention, remove_radial_attention
from accelerando.models.musicgen_lite import TINY_CONFIG, MusicGenLite, MusicGenLiteConfig, generate, inputs_and_labels

RATE = 10.0  # steps per second of these tests: a bar of 2 s at 120 BPM is 20 steps
NARROW = RadialConfig(window_s=0.4, bars_back=2, bpm=120, band_width_s=0.1, causal=True, frame_rate=RATE, block_size=4)


def tiny(variant: str) -> MusicGenLite:
    torch.manual_seed(0)
    return MusicGenLite(MusicGenLiteConfig(variant=variant, **TINY_CONFIG)).eval()


def condition(b: int = 2, length: int = 5):
    g = torch.Generator().manual_seed(0)
    states = torch.randn(b, length, TINY_CONFIG.get("text_dim", 384), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 3:] = 0  # the second prompt is shorter
    return states, mask


def random_codes(model, seed: int, steps: int = 60) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.codebook_size, (2, model.config.codebooks, steps), generator=g)


def logits(model, codes, states, mask):
    inputs, _ = inputs_and_labels(codes, model.config.codebook_size)
    with torch.no_grad():
        return model(inputs, states, mask)


@pytest.mark.parametrize("variant", ["a", "b"])
def test_token_model_patch_round_trips_and_decodes_consistently(variant):
    model = tiny(variant)
    states, mask = condition()
    codes = random_codes(model, seed=1)
    stock = logits(model, codes, states, mask)

    everything = RadialConfig(window_s=1000.0, bars_back=0, causal=True, frame_rate=RATE)
    patch = apply_radial_attention(model, everything)
    torch.testing.assert_close(logits(model, codes, states, mask), stock, atol=1e-5, rtol=1e-4)
    remove_radial_attention(model, patch)

    patch = apply_radial_attention(model, NARROW)
    narrow = logits(model, codes, states, mask)
    assert torch.isfinite(narrow).all() and not torch.allclose(narrow, stock, atol=1e-4)
    cached, _ = generate(model, states, mask, frames=30, guidance=3.0, seed=0, use_cache=True, frame_rate=RATE)
    recomputed, _ = generate(model, states, mask, frames=30, guidance=3.0, seed=0, use_cache=False, frame_rate=RATE)
    assert torch.equal(cached, recomputed)
    remove_radial_attention(model, patch)
    dense = apply_radial_attention(model, NARROW, kernel="dense")
    by_dense, _ = generate(model, states, mask, frames=30, guidance=3.0, seed=0, use_cache=True, frame_rate=RATE)
    assert torch.equal(by_dense, cached)
    remove_radial_attention(model, dense)

    assert torch.equal(logits(model, codes, states, mask), stock)


def test_token_model_settings_and_models_that_cannot_take_it():
    model = tiny("a")
    with pytest.raises(ValueError, match="causal=True"):
        apply_radial_attention(model, RadialConfig(frame_rate=RATE))
    with pytest.raises(ValueError, match="recompile"):
        apply_radial_attention(model, NARROW, kernel="flex")
    with pytest.raises(TypeError, match="MusicgenAttention"):
        apply_radial_attention(nn.Linear(3, 3), NARROW)
    patch = apply_radial_attention(model, NARROW)
    with pytest.raises(RuntimeError, match="already"):
        apply_radial_attention(model, NARROW)
    remove_radial_attention(model, patch)


@pytest.mark.parametrize("variant", ["a", "b"])
def test_bounded_cache_gives_the_full_forward_and_stays_bounded(variant):
    model = tiny(variant)
    states, mask = condition()
    inputs, _ = inputs_and_labels(random_codes(model, seed=2), model.config.codebook_size)
    patch = apply_radial_attention(model, NARROW)
    with torch.no_grad():
        full = model(inputs, states, mask)
        cache = model.new_cache()
        steps = []
        for t in range(inputs.shape[-1]):
            steps.append(model(inputs[:, :, t:t + 1], states, mask, cache=cache, past_steps=t))
            self_cache = getattr(cache, "self_attention_cache", cache)
            kept = self_cache.layers[0].keys.shape[-2]
            assert kept <= patch.sinks + NARROW.reach
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-5, rtol=1e-4)
    assert self_cache.get_seq_length() == inputs.shape[-1] + (states.shape[1] if variant == "a" else 0)
    remove_radial_attention(model, patch)
    assert "new_cache" not in vars(model)


def test_transformers_musicgen_takes_the_patch_with_padded_prompts():
    from accelerando.models.musicgen import build_musicgen, musicgen_tokenizer

    model = build_musicgen("tiny").eval()
    tokens = musicgen_tokenizer()(["a slow chorale for brass in D minor", "a jig"], return_tensors="pt", padding=True)
    assert not tokens.attention_mask.all()  # the second prompt is padded
    codes = torch.randint(0, 2048, (2 * model.decoder.num_codebooks, 40), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, decoder_input_ids=codes).logits

    stock = forward()
    rate = float(model.config.audio_encoder.frame_rate)
    everything = apply_radial_attention(model, RadialConfig(window_s=1000.0, bars_back=0, causal=True, frame_rate=rate))
    torch.testing.assert_close(forward(), stock, atol=1e-5, rtol=1e-4)
    remove_radial_attention(model, everything)
    narrow = apply_radial_attention(model, RadialConfig(window_s=0.1, bars_back=1, bpm=240, band_width_s=0.05,
                                                        causal=True, frame_rate=rate, block_size=4))
    changed = forward()
    assert torch.isfinite(changed).all() and not torch.allclose(changed, stock, atol=1e-4)
    remove_radial_attention(model, narrow)
    assert torch.equal(forward(), stock)

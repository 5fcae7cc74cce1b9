"""accelerando.attention: processors install through set_attn_processor and restore exactly what
was there, so patches stack and unstack in any order; the key/value cache is such a patch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from accelerando.attention import (
    KeyValueCache,
    KeyValueCacheProcessor,
    attention_patch,
    install_attn_processors,
    is_self_attention,
    key_value_cache,
    restore_attn_processors,
)
from accelerando.models.stable_audio_conditioning import rotary


class Scaled:
    """A patch for the test: the wrapped processor's output times `factor`."""

    def __init__(self, inner, factor: float):
        self.inner, self.factor = inner, factor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.factor * self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def _forward(pipe, gen_seed: int = 0) -> torch.Tensor:
    tr = pipe.transformer
    gen = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(1, tr.config.in_channels, 10, generator=gen)
    enc = torch.randn(1, 5, tr.config.cross_attention_input_dim, generator=gen)
    glob = torch.randn(1, 1, tr.config.global_states_input_dim, generator=gen)
    with torch.no_grad():
        return tr(x, torch.tensor([0.4]), encoder_hidden_states=enc, global_hidden_states=glob,
                  rotary_embedding=rotary(pipe, 10), return_dict=False)[0]


def test_patches_stack_and_unstack_in_either_order(tiny_lite_pipe):
    tr = tiny_lite_pipe.transformer
    stock = tr.attn_processors
    reference = _forward(tiny_lite_pipe)
    saved_a = install_attn_processors(tr, lambda name, old: Scaled(old, 0.5))
    a = tr.attn_processors
    assert all(isinstance(p, Scaled) for p in a.values())
    saved_b = install_attn_processors(tr, lambda name, old: Scaled(old, 2.0) if is_self_attention(name) else old)
    assert all(isinstance(p, Scaled) and p.factor == 2.0 and p.inner is a[k]
               for k, p in tr.attn_processors.items() if is_self_attention(k))
    assert not torch.allclose(_forward(tiny_lite_pipe), reference)
    restore_attn_processors(tr, saved_b)  # B off: A's processors, the same objects
    assert all(tr.attn_processors[k] is p for k, p in a.items())
    restore_attn_processors(tr, saved_a)  # A off: the stock ones
    assert all(tr.attn_processors[k] is p for k, p in stock.items())
    assert torch.equal(_forward(tiny_lite_pipe), reference)

    # the other order: B first, A on top; the saved dicts are not consumed by restoring
    saved_b = install_attn_processors(tr, lambda name, old: Scaled(old, 2.0) if is_self_attention(name) else old)
    b = tr.attn_processors
    saved_a = install_attn_processors(tr, lambda name, old: Scaled(old, 0.5))
    assert all(p.inner is b[k] for k, p in tr.attn_processors.items())
    restore_attn_processors(tr, saved_a)
    assert all(tr.attn_processors[k] is p for k, p in b.items())
    restore_attn_processors(tr, saved_b)
    assert all(tr.attn_processors[k] is p for k, p in stock.items())
    assert len(saved_a) == len(saved_b) == len(stock)
    assert torch.equal(_forward(tiny_lite_pipe), reference)


def test_context_manager_restores_on_error_and_refuses_other_models(tiny_lite_pipe):
    tr = tiny_lite_pipe.transformer
    stock = tr.attn_processors
    with pytest.raises(RuntimeError, match="inside"):
        with attention_patch(tr, lambda name, old: Scaled(old, 3.0)) as installed:
            assert all(isinstance(p, Scaled) for p in installed.values())
            raise RuntimeError("inside the block")
    assert all(tr.attn_processors[k] is p for k, p in stock.items())
    with pytest.raises(TypeError, match="set_attn_processor"):
        install_attn_processors(nn.Linear(2, 2), lambda name, old: old)
    with pytest.raises(TypeError, match="StableAudioDiTModel"):
        KeyValueCache.install(tiny_lite_pipe.vae)


def test_key_value_cache_stacks_on_another_patch_and_restores_it(tiny_lite_pipe):
    tr = tiny_lite_pipe.transformer
    stock = tr.attn_processors
    saved = install_attn_processors(tr, lambda name, old: Scaled(old, 1.0))
    patched = tr.attn_processors
    with key_value_cache(tr) as cache:
        current = tr.attn_processors
        assert [current[k].layer for k in current if is_self_attention(k)] == list(range(tr.config.num_layers))
        assert all(isinstance(current[k], KeyValueCacheProcessor) == is_self_attention(k) for k in current)
        assert all(current[k] is patched[k] for k in current if not is_self_attention(k))  # cross-attention kept
        _forward(tiny_lite_pipe)
        assert cache.nbytes() > 0
        cache.reset_state()
        assert cache.nbytes() == 0
    assert all(tr.attn_processors[k] is p for k, p in patched.items())
    with pytest.raises(RuntimeError, match="not installed"):
        cache.remove(tr)
    restore_attn_processors(tr, saved)
    assert all(tr.attn_processors[k] is p for k, p in stock.items())

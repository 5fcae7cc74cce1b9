"""Installing attention processors on a diffusers model, and restoring exactly what was there.

A diffusers `Attention` module owns its weights and delegates the computation to
`self.processor(attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
rotary_emb=None)` (`StableAudioAttnProcessor2_0`'s call signature). A technique that changes
attention (a key/value cache, radial masks, patch parallelism) is such a processor, set through
the model's own `set_attn_processor`. Undoing it sets back the processors that were there before,
read from `model.attn_processors` (diffusers' recipe), not fresh stock ones, so patches go on
in any order and come off last-on first-off (restoring an older saved dict also removes
every patch installed after it):

    saved = install_attn_processors(model, lambda name, old: MyProcessor(...))
    ...
    restore_attn_processors(model, saved)

    with attention_patch(model, make) as installed:     # the same, as a context manager
        ...

`make(name, old)` gets each processor's key (e.g. "transformer_blocks.0.attn1.processor") and the
processor it replaces, and returns the new processor, or `old` to leave that layer alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

Processor = Callable  # a callable with StableAudioAttnProcessor2_0's signature
MakeProcessor = Callable[[str, Processor], Processor]


def _check_model(model: nn.Module) -> None:
    if not (hasattr(model, "attn_processors") and hasattr(model, "set_attn_processor")):
        raise TypeError(f"{type(model).__name__} has no attn_processors / set_attn_processor: pass a diffusers "
                        "model with attention processors, e.g. pipe.transformer (StableAudioDiTModel)")


def install_attn_processors(model: nn.Module, make: MakeProcessor) -> dict[str, Processor]:
    """Set `make(name, old)` as the processor of every attention layer of `model`.

    Returns the processors that were there before ({name: processor}), to pass to
    `restore_attn_processors`.
    """
    _check_model(model)
    before = dict(model.attn_processors)
    # set_attn_processor pops from the dict it is given: hand it a fresh one
    model.set_attn_processor({name: make(name, old) for name, old in before.items()})
    return before


def restore_attn_processors(model: nn.Module, saved: dict[str, Processor]) -> None:
    """Set back the processors `install_attn_processors` returned: the very same objects."""
    _check_model(model)
    model.set_attn_processor(dict(saved))


@contextmanager
def attention_patch(model: nn.Module, make: MakeProcessor) -> Iterator[dict[str, Processor]]:
    """`install_attn_processors` for the body of a `with` block; restores on exit, also on errors.

    Yields the installed processors {name: processor}."""
    saved = install_attn_processors(model, make)
    try:
        yield dict(model.attn_processors)
    finally:
        restore_attn_processors(model, saved)


def is_self_attention(name: str) -> bool:
    """Whether a processor key names a Stable Audio DiT block's self-attention (`attn1`); `attn2`
    is the cross-attention to the text and timing states."""
    return name.endswith("attn1.processor")

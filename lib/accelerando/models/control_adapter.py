"""A musical-control adapter for a stock Stable Audio DiT: beat, metre and key as frame features.

`StableAudioDiTModel` takes text and timing only. Like diffusers' T2I adapters, the control
path is a separate small model whose output enters the stock transformer, so the transformer's
class, weights and attention processors stay those of Stable Audio: the adapter maps the
`accelerando.musical_controls` features [B, CONTROL_CHANNELS, T] to a residual on the DiT's
input latents [B, C, T] (its last layer starts at zero, so an untrained adapter changes nothing).

    adapter = MusicalControlAdapter(out_channels=64)
    x = adapter.add_to(model_input, features)           # training: explicit
    with controls_applied(pipe.transformer, adapter, features):
        pipe(prompts, ...)                              # sampling: every transformer call, restored after

Under classifier-free guidance the pipeline runs [unconditional; conditional] rows as one batch of
2B; the unconditional rows get zero controls, as training's dropped rows do, so guidance pushes
towards the asked beat and key as it pushes towards the caption.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..musical_controls import CONTROL_CHANNELS


class MusicalControlAdapter(ModelMixin, ConfigMixin):
    """Frame features [B, control_channels, T] -> a residual [B, out_channels, T] on the latents."""

    @register_to_config
    def __init__(self, control_channels: int = CONTROL_CHANNELS, out_channels: int = 64, hidden_channels: int = 128,
                 kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.Conv1d(control_channels, hidden_channels, kernel_size, padding=pad), nn.SiLU(),
            nn.Conv1d(hidden_channels, out_channels, kernel_size, padding=pad),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def add_to(self, hidden_states: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """`hidden_states` [B', C, T] plus the residual of `features` [B, F, T'] (T' >= T is cut to T).
        B' = 2B is a guidance batch [unconditional; conditional]: the first B rows get no control."""
        features = features[..., : hidden_states.shape[-1]].to(hidden_states.device, hidden_states.dtype)
        b = features.shape[0]
        if hidden_states.shape[0] == 2 * b:
            features = torch.cat([torch.zeros_like(features), features])
        elif hidden_states.shape[0] != b:
            raise ValueError(f"controls for {b} rows, the transformer got {hidden_states.shape[0]}: "
                             f"pass one control row per prompt")
        return hidden_states + self(features)


@contextmanager
def controls_applied(transformer: nn.Module, adapter: MusicalControlAdapter, features: torch.Tensor
                     ) -> Iterator[None]:
    """While active, every call of `transformer` sees its input latents plus the adapter's residual
    of `features` [B, F, T]; the hook is removed on exit, even after an error."""

    def hook(module, args, kwargs):
        if args:
            return (adapter.add_to(args[0], features), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": adapter.add_to(kwargs["hidden_states"], features)}

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()

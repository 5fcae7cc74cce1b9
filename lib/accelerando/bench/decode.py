"""Token-by-token decoding speed of MusicGen's decoder: dense bf16 against packed weight-only codes.

    decoder = musicgen_decoder("small")                   # facebook/musicgen-small's decoder, random weights
    table = decoding_speed(decoder, {"bf16": None, "W8A16": PackedWeightOnlyConfig(weight_bits=8, skip=TOKEN_SKIP)})

Each candidate decodes the same `tokens` steps at batch `batch` (MusicGen's CFG doubles a prompt's
batch to 2) with a KV cache, cross-attending to `memory_tokens` text states, after a one-step
prefill; candidates are timed interleaved (`measure.compare`), so the per-token ratio against the
baseline is what a reader should take from one run. Dense candidates run in bf16, the fair dense
path on CPUs with AMX; quantized candidates are copies of the fp32 decoder through `quantize_`,
with the layers the config skips (output heads, embeddings) in bf16. Fidelity of the same
numerics comes from `quant_tokens.token_fidelity` with the same config.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from ..quant import QuantConfig, quantize_
from .measure import compare


def musicgen_decoder(preset: str = "small", seed: int = 0) -> nn.Module:
    """The `MusicgenForCausalLM` decoder of `models.musicgen.build_musicgen(preset)` (random weights,
    fp32, eval): the part that runs once per generated token."""
    from ..models.musicgen import build_musicgen

    return build_musicgen(preset, seed=seed).decoder.eval()


def decode_steps(decoder: nn.Module, tokens: int, batch: int = 1, memory_tokens: int = 16, seed: int = 0
                 ) -> Callable[[], torch.Tensor]:
    """A function that decodes `tokens` steps of `decoder` greedily with a fresh KV cache; returns
    the last step's logits. Inputs are drawn once (seeded), so every call does the same work."""
    cfg = decoder.config
    g = torch.Generator().manual_seed(seed)
    dtype = next(decoder.parameters()).dtype
    memory = torch.randn(batch, memory_tokens, cfg.hidden_size, generator=g).to(dtype)
    start = torch.full((batch * cfg.num_codebooks, 1), cfg.pad_token_id, dtype=torch.long)

    @torch.no_grad()
    def run() -> torch.Tensor:
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        ids = start
        for _ in range(tokens):
            out = decoder(input_ids=ids, encoder_hidden_states=memory, past_key_values=cache, use_cache=True)
            ids = out.logits[:, -1].argmax(-1, keepdim=True)
        return out.logits

    return run


def decoding_candidates(decoder: nn.Module, configs: dict[str, QuantConfig | None]) -> dict[str, nn.Module]:
    """A copy of the fp32 `decoder` per config: None is the dense model in bf16; a config is applied
    by `quantize_` to an fp32 copy, whose remaining layers then go to bf16."""
    out = {}
    for name, config in configs.items():
        model = copy.deepcopy(decoder).float()
        if config is not None:
            quantize_(model, config)
        out[name] = model.to(torch.bfloat16).eval()
    return out


def decoding_speed(decoder: nn.Module, configs: dict[str, QuantConfig | None], tokens: int = 32, batch: int = 1,
                   memory_tokens: int = 16, rounds: int = 5, warmup: int = 1, baseline: str | None = None,
                   seed: int = 0) -> dict[str, dict]:
    """Per candidate: ms per generated token (min and median of `rounds` interleaved rounds),
    `speedup_vs_baseline` (baseline: the first config unless named), the bytes of its linear
    weights and the threads. Also checks that every candidate runs (raises otherwise)."""
    models = decoding_candidates(decoder, configs)
    runs = {name: decode_steps(m, tokens, batch, memory_tokens, seed) for name, m in models.items()}
    timed = compare(runs, rounds=rounds, warmup=warmup, baseline=baseline or next(iter(configs)), device="cpu")
    out = {}
    for name, res in timed.items():
        out[name] = {"ms_per_token_min": 1e3 * res["latency_s_min"] / tokens,
                     "ms_per_token_median": 1e3 * res["latency_s_median"] / tokens,
                     "speedup_vs_baseline": res["speedup_vs_baseline"], "rounds": res["repeats"],
                     "linear_weight_bytes": linear_weight_bytes(models[name]), "tokens": tokens, "batch": batch,
                     "threads": torch.get_num_threads()}
    return out


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes every linear layer stores (weight and bias), dense or quantized (`weight_bytes()`
    where a quantized layer has one)."""
    total = 0
    for module in model.modules():
        if hasattr(module, "weight_bytes"):
            total += module.weight_bytes()
        elif isinstance(module, nn.Linear):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total

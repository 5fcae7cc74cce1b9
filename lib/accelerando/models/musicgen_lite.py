"""MusicGen-Lite: language models over Codec-Lite tokens, built from MusicGen's own
decoder layers (transformers `MusicgenDecoderLayer`), trained here on the corpus.

Audio is K parallel code streams [batch, K, frames] (`codec_lite`, 21.5 frames/s; or any other
`TokenCodec`, such as EnCodec through `encodec_codec`), laid out by one of two codebook patterns
(`MusicGenLiteConfig.pattern`):

    "delay" (MusicGen's, the default): codebook k runs k steps late, so one decoder step emits one
      token per codebook: the step's input is the sum of K code embeddings, its outputs K heads.
      T frames take T + K - 1 steps; the model's streams are [B, K, steps].
    "flatten" (the research plan's interleaved pattern): the K codes of a frame one after another, one token
      per step, so every code sees all codes before it (exact autoregression) at K times the steps.
      Step s's input is the token of codebook (s - 1) mod K, its output comes from head s mod K;
      the model's stream is [B, 1, T x K].

    Model A (variant "a", the plan's baseline): a prefix LM. The frozen MiniLM token states of the
      prompt, projected to the model width, are prepended to the audio steps; one causal
      self-attention stack runs over [text | audio]. No cross-attention.
    Model B (variant "b", the plan's proposal): self-attention over the audio steps interleaved
      with cross-attention to a memory that concatenates the projected text states and the
      embedded codes of an audio prompt (~3 s, with learned positions): the style/tempo seed.

    model = MusicGenLite(MusicGenLiteConfig(variant="b"))
    logits = model(inputs, text_states, text_mask, prompt_codes)    # [B, K, steps, codebook_size]
    codes = generate(model, codec, ["a chorale in D major"], frames=172, prompt_codes=p, guidance=3.0)

The unconditional branch of classifier-free guidance is the null condition the models are trained
with (condition dropout): all-zero text states with only the first position unmasked, no audio
prompt. Token layout: ids 0..size-1 are codes; id `size` is the special token that starts the
sequence and fills the delay pattern's empty corners (never a target, never sampled).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from transformers import MusicgenDecoderConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer, MusicgenSinusoidalPositionalEmbedding

from ..musical_controls import MusicalControls, control_features
from .codec_lite import TokenCodec
from .patterns import PATTERNS, delay_pattern, flatten_pattern, sequence_steps, undelay_pattern, unflatten_pattern

VARIANTS = ("a", "b")


@dataclass
class MusicGenLiteConfig:
    variant: str = "a"  # "a": text prefix LM; "b": cross-attention to text + audio prompt
    codebooks: int = 4
    codebook_size: int = 1024
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    ffn_size: int = 768
    text_dim: int = 384  # MiniLM-L6 width
    max_prompt_frames: int = 96  # audio prompt positions (model B), 4.5 s at 21.5 frames/s
    max_frames: int = 215  # the longest sequence trained on (10 s); longer generation is refused
    dropout: float = 0.1
    pattern: str = "delay"  # codebook pattern: "delay" (K tokens per step) or "flatten" (one token per step)
    control_channels: int = 0  # musical-control frame features added to the inputs (0: none)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}: use 'a' (text prefix) or 'b' (text + audio prompt)")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern={self.pattern!r}: use one of {PATTERNS}")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of heads {self.heads}")

    @classmethod
    def from_dict(cls, d: dict) -> MusicGenLiteConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MusicGen-Lite config fields {unknown}: this checkpoint is from another version")
        return cls(**d)

    def decoder_config(self) -> MusicgenDecoderConfig:
        """The transformers config of MusicGen's decoder at this size (the layers read it)."""
        cfg = MusicgenDecoderConfig(
            vocab_size=self.codebook_size, hidden_size=self.hidden_size, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, ffn_dim=self.ffn_size, num_codebooks=self.codebooks,
            dropout=self.dropout, attention_dropout=0.0, pad_token_id=None, bos_token_id=None, activation_dropout=0.0, activation_function="gelu")
        cfg._attn_implementation = "sdpa"
        return cfg

    @property
    def streams(self) -> int:
        """Rows of the model's token layout: K in the delay pattern, 1 flattened."""
        return self.codebooks if self.pattern == "delay" else 1


TINY_CONFIG = dict(codebooks=2, codebook_size=16, hidden_size=32, layers=2, heads=2, ffn_size=64, text_dim=8,
                   max_prompt_frames=32, max_frames=64, dropout=0.0)


class MusicGenLite(nn.Module):
    """Decoder-only token LM over delayed RVQ codes, conditioned on text (A) or text + audio (B)."""

    def __init__(self, config: MusicGenLiteConfig):
        super().__init__()
        self.config = config
        dc = config.decoder_config()
        d = config.hidden_size
        self.embed_tokens = nn.ModuleList(nn.Embedding(config.codebook_size + 1, d) for _ in range(config.codebooks))
        self.embed_positions = MusicgenSinusoidalPositionalEmbedding(4096, d)  # not a parameter
        self.text_proj = nn.Linear(config.text_dim, d)
        self.layers = nn.ModuleList(MusicgenDecoderLayer(dc, layer_idx=i) for i in range(config.layers))
        if config.variant == "a":
            for layer in self.layers:  # a prefix LM has no memory to attend to
                layer.encoder_attn = layer.encoder_attn_layer_norm = None
        else:
            self.prompt_proj = nn.Linear(d, d)
            self.prompt_positions = nn.Embedding(config.max_prompt_frames, d)
        self.layer_norm = nn.LayerNorm(d)
        self.lm_heads = nn.ModuleList(nn.Linear(d, config.codebook_size, bias=False) for _ in range(config.codebooks))
        self.apply(self._init)
        if config.control_channels:
            # beat, metre and key features of the frame a step predicts (`accelerando.musical_controls`);
            # zero at the start, so the untrained path changes nothing
            self.control_proj = nn.Linear(config.control_channels, d)
            nn.init.zeros_(self.control_proj.weight)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # -- inputs ---------------------------------------------------------------------------------

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, K, S] token ids (codes or the special token) -> [B, S, hidden]: sum over codebooks."""
        return sum(self.embed_tokens[k](codes[:, k]) for k in range(codes.shape[1]))

    def memory(self, text_states: torch.Tensor, text_mask: torch.Tensor, prompt_codes: torch.Tensor | None = None,
               prompt_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model B's cross-attention memory [B, L + P, hidden] and its mask [B, L + P]: projected
        text states, then the embedded audio prompt codes [B, K, P] with learned positions."""
        mem, mask = self.text_proj(text_states), text_mask
        if prompt_codes is not None and prompt_codes.shape[-1]:
            p = prompt_codes.shape[-1]
            if p > self.config.max_prompt_frames:
                raise ValueError(f"audio prompt of {p} frames; this model takes at most {self.config.max_prompt_frames}: "
                                 "shorten the prompt clip")
            emb = self.prompt_proj(self.embed_codes(prompt_codes)) + self.prompt_positions.weight[:p]
            pm = prompt_mask if prompt_mask is not None else text_mask.new_ones(text_mask.shape[0], p)
            mem, mask = torch.cat([mem, emb], 1), torch.cat([mask, pm], 1)
        return mem, mask

    # -- forward --------------------------------------------------------------------------------

    def forward(self, inputs: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
                prompt_codes: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
                cache=None, past_steps: int = 0, controls: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, K, S, codebook_size] for the next token of every codebook at each of the S
        input steps `inputs` [B, K, S] (delayed layout, shifted right by the special token).

        text_states [B, L, text_dim], text_mask [B, L] (1 = token); prompt_codes [B, K, P] (model B).
        With a `cache` (from `new_cache`), `inputs` are the steps after the `past_steps` already
        in it; model A's text prefix is fed with the first call (past_steps == 0) only.
        controls [B, control_channels, steps >= past_steps + S]: frame features per step
        (`step_controls`), for a model with control_channels; None: uncontrolled (zeros)."""
        if inputs.ndim != 3 or inputs.shape[1] != self.config.streams:
            raise ValueError(f"inputs of shape {tuple(inputs.shape)}: expected [batch, {self.config.streams}, steps] "
                             f"({self.config.pattern} pattern)")
        if prompt_codes is not None and self.config.variant == "a":
            raise ValueError("model A takes no audio prompt: continue from it instead (generate(..., continuation=codes))")
        x = self.embed_codes(inputs) if self.config.pattern == "delay" else self._embed_flat(inputs[:, 0], past_steps)
        b, s = x.shape[:2]
        # audio steps take positions 0.. whatever the prompt's length, so text padding changes nothing;
        # the text prefix adds none (MiniLM's states already carry word order)
        x = x + self.embed_positions.weights[past_steps:past_steps + s].to(x.dtype)
        if controls is not None:
            if not self.config.control_channels:
                raise ValueError("controls given to a model trained without them (control_channels=0): pass controls=None")
            x = x + self.control_proj(controls[:, :, past_steps:past_steps + s].transpose(1, 2).to(x.dtype))
        memory = None
        if self.config.variant == "a":
            if past_steps == 0:
                x = torch.cat([self.text_proj(text_states), x], 1)
                start = 0
            else:
                start = text_states.shape[1] + past_steps
            key_mask = torch.cat([text_mask, text_mask.new_ones(b, past_steps + s)], 1)  # [B, L + steps]
        else:
            start = past_steps
            key_mask = text_mask.new_ones(b, past_steps + s)
            # recomputed at every cached step (cheap: L + P rows); the layers reuse their cached K/V of it
            memory, memory_mask = self.memory(text_states, text_mask, prompt_codes, prompt_mask)
        q = x.shape[1]
        h = nn.functional.dropout(x, p=self.config.dropout, training=self.training)
        allowed = _causal(q, start, x.device)[None] & key_mask[:, None, :].bool()  # [B, q, keys]
        self_mask = _additive(allowed[:, None], h.dtype)  # [B, 1, q, keys]
        cross_mask = None
        if memory is not None:
            cross_mask = _additive(memory_mask[:, None, None, :].bool().expand(b, 1, q, -1), h.dtype)
        for layer in self.layers:
            h = layer(h, self_mask, memory, encoder_attention_mask=cross_mask, past_key_values=cache,
                      use_cache=cache is not None)
        h = self.layer_norm(h[:, -s:])
        if self.config.pattern == "delay":
            return torch.stack([head(h) for head in self.lm_heads], dim=1)
        book = torch.arange(past_steps, past_steps + s) % self.config.codebooks  # step s predicts codebook s mod K
        logits = h.new_empty(b, s, self.config.codebook_size)
        for k, head in enumerate(self.lm_heads):
            logits[:, book == k] = head(h[:, book == k]).to(logits.dtype)  # bf16 under autocast
        return logits[:, None]

    def _embed_flat(self, tokens: torch.Tensor, past_steps: int) -> torch.Tensor:
        """Flattened inputs [B, S] -> [B, S, hidden]: step s holds a token of codebook (s - 1) mod K
        (step 0, the start token, counts as codebook K - 1's)."""
        book = (torch.arange(past_steps, past_steps + tokens.shape[1]) - 1) % self.config.codebooks
        x = tokens.new_zeros(tokens.shape + (self.config.hidden_size,), dtype=self.text_proj.weight.dtype)
        for k, emb in enumerate(self.embed_tokens):
            x[:, book == k] = emb(tokens[:, book == k])
        return x

    def new_cache(self):
        """An empty KV cache for `forward(..., cache=)` (self-attention; plus cross-attention for B)."""
        if self.config.variant == "a":
            return DynamicCache()
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _causal(q: int, start: int, device) -> torch.Tensor:
    """[q, start + q] bool: query i (absolute position start + i) sees keys <= start + i."""
    return torch.arange(start + q, device=device)[None, :] <= (start + torch.arange(q, device=device))[:, None]


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    # a large finite negative, not -inf: a fully masked row (never produced here) would give NaN
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


# ---------------------------------------------------------------------------------------------
# Training inputs and loss
# ---------------------------------------------------------------------------------------------


def step_controls(features: torch.Tensor, codebooks: int, pattern: str = "delay") -> torch.Tensor:
    """Frame features [B, F, T] -> per decoding step [B, F, steps]: the features of the frame a
    step predicts (delay: step t predicts codebook 0 of frame t, the last K - 1 steps get zeros;
    flatten: step s predicts a code of frame s // K)."""
    if pattern == "flatten":
        return features.repeat_interleave(codebooks, dim=-1)
    return nn.functional.pad(features, (0, codebooks - 1))


def inputs_and_labels(codes: torch.Tensor, special: int, pattern: str = "delay") -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [B, K, T] -> (inputs, labels), each [B, K, T + K - 1] (delay) or [B, 1, T x K]
    (flatten): the pattern shifted right by one special token, and the pattern itself with the
    delay pattern's empty corners -100."""
    laid = delay_pattern(codes, pad=special) if pattern == "delay" else flatten_pattern(codes)[:, None]
    inputs = torch.cat([laid.new_full(laid.shape[:2] + (1,), special), laid[..., :-1]], -1)
    return inputs, laid.masked_fill(laid == special, -100)


def label_codebooks(labels: torch.Tensor, codebooks: int) -> torch.Tensor:
    """The codebook [R, S] of each position of a label layout [B, R, S]: the row in the delay
    pattern (R = K), the step mod K flattened (R = 1)."""
    r, s = labels.shape[1:]
    if r == codebooks:
        return torch.arange(r)[:, None].expand(r, s)
    return (torch.arange(s) % codebooks)[None]


def codebook_nll(logits: torch.Tensor, labels: torch.Tensor, codebooks: int | None = None) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of each codebook [K], ignoring -100 labels.
    logits [B, R, S, V], labels [B, R, S] in either pattern (`codebooks`: K, needed when R = 1)."""
    k = codebooks or logits.shape[1]
    ce = nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), labels, ignore_index=-100, reduction="none")
    book, counted = label_codebooks(labels, k), labels != -100
    return torch.stack([ce[:, book == i].sum() / counted[:, book == i].sum().clamp(min=1) for i in range(k)])


def null_condition(text_states: torch.Tensor, text_mask: torch.Tensor, drop: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `drop` [B] bool (all rows if None) replaced by the null text: zero states, only the
    first position unmasked. This is what condition dropout trains and what CFG's unconditional
    branch feeds."""
    drop = torch.ones(text_states.shape[0], dtype=torch.bool) if drop is None else drop
    null_mask = torch.zeros_like(text_mask)
    null_mask[:, 0] = 1
    states = torch.where(drop[:, None, None], torch.zeros_like(text_states), text_states)
    return states, torch.where(drop[:, None], null_mask, text_mask)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + w (cond - uncond); w = 1 is the conditional model."""
    return uncond + weight * (cond - uncond)


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits [..., V]: greedy if temperature == 0, else softmax(logits / T)
    restricted to the top_k tokens (0: all) and the smallest set of probability >= top_p (0: off)."""
    if temperature < 0 or top_k < 0 or not 0 <= top_p <= 1:
        raise ValueError(f"temperature={temperature}, top_k={top_k}, top_p={top_p}: need T >= 0, k >= 0, 0 <= p <= 1")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # keep the first token that crosses p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.reshape(probs.shape[:-1])


@dataclass
class GenerationStats:
    steps: int
    frames: int
    seconds: float  # wall-clock of the decoding loop
    tokens_per_second: float  # codebook tokens (frames x K) per second
    real_time_factor: float  # audio seconds per wall-clock second (> 1: faster than real time)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def generate(model: MusicGenLite, text_states: torch.Tensor, text_mask: torch.Tensor, frames: int,
             prompt_codes: torch.Tensor | None = None, continuation: torch.Tensor | None = None,
             guidance: float = 3.0, temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0,
             seed: int | None = 0, use_cache: bool = True, frame_rate: float = 21.533,
             controls: torch.Tensor | None = None) -> tuple[torch.Tensor, GenerationStats]:
    """Sample codes [B, K, frames]: in the delay pattern one step per frame plus K - 1, flattened
    one step per code (frames x K).

    text_states [B, L, text_dim] / text_mask [B, L]: the prompts (MiniLM token states);
    prompt_codes [B, K, P]: model B's audio prompt; continuation [B, K, C] (C < frames): codes the
    output starts with (MusicGen's audio-prompt mode, either model), returned as its first C frames.
    guidance: CFG weight (1 = conditional only; otherwise both branches run as one batch of 2B).
    use_cache: the KV-cached loop, one step per forward; without it every step re-runs the whole
    sequence (the same logits, tests check it; kept to measure what the cache buys).
    controls [B, F, frames]: musical-control frame features (models with control_channels); the
    unconditional rows of guidance get none, as in training."""
    cfg = model.config
    if frames < 1:
        raise ValueError(f"frames={frames}: generate at least one frame")
    if prompt_codes is not None and cfg.variant == "a":
        raise ValueError("model A takes no audio prompt; pass it as continuation= (it then continues the clip)")
    b, k, special = text_states.shape[0], cfg.codebooks, cfg.codebook_size
    known = continuation.shape[-1] if continuation is not None else 0
    if known >= frames:
        raise ValueError(f"continuation of {known} frames leaves nothing to generate in {frames} frames")
    forced = forced_tokens(b, k, frames, continuation, special, cfg.pattern)
    steps = forced.shape[-1]
    guided = guidance != 1.0
    states, mask, prompt, pmask = condition_rows(text_states, text_mask, prompt_codes, guided)
    if controls is not None:
        controls = step_controls(controls[..., :frames], k, cfg.pattern)
        controls = nn.functional.pad(controls, (0, max(0, steps - controls.shape[-1])))
        if guided:
            controls = torch.cat([controls, torch.zeros_like(controls)])
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    model.eval()
    out = forced.clone()
    inputs = torch.full((b, forced.shape[1], steps + 1), special, dtype=torch.long)  # inputs[:, :, s] feeds step s
    cache = model.new_cache() if use_cache else None
    t0 = time.perf_counter()
    step = 0
    # the leading steps whose outputs are all forced need no sampling: with a cache they are prefilled in one call
    prefill = int((forced >= 0).flatten(0, 1).all(0).int().cumprod(0).sum()) if use_cache else 0
    inputs[:, :, 1:prefill + 1] = forced[:, :, :prefill]
    while step < steps:
        if not use_cache and (out[:, :, step] >= 0).all():  # nothing to sample (the cached loop prefills these)
            inputs[:, :, step + 1] = out[:, :, step]
            step += 1
            continue
        if use_cache:
            s0, s1 = (0, prefill + 1) if step == 0 and prefill else (step, step + 1)
            x = inputs[:, :, s0:s1]
            logits = model(_rows(x, guided), states, mask, prompt, pmask, cache=cache, past_steps=s0,
                           controls=controls)[:, :, -1]
            step = s1 - 1
        else:
            logits = model(_rows(inputs[:, :, :step + 1], guided), states, mask, prompt, pmask,
                           controls=controls)[:, :, -1]
        if guided:
            logits = cfg_logits(logits[:b], logits[b:], guidance)
        token = sample_logits(logits, temperature, top_k, top_p, gen)  # [B, streams]
        free = out[:, :, step] < 0
        out[:, :, step] = torch.where(free, token, out[:, :, step])
        inputs[:, :, step + 1] = out[:, :, step]
        step += 1
    seconds = time.perf_counter() - t0
    codes = undelay_pattern(out) if cfg.pattern == "delay" else unflatten_pattern(out[:, 0], k)
    new_frames = frames - known
    stats = GenerationStats(steps, frames, seconds, b * k * new_frames / seconds, b * new_frames / frame_rate / seconds)
    return codes, stats


def condition_rows(text_states: torch.Tensor, text_mask: torch.Tensor, prompt_codes: torch.Tensor | None,
                   guided: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The model's condition inputs (states, mask, prompt codes, prompt mask): as given, or under
    guidance the rows [cond; uncond], where uncond is the null text and a masked-out audio prompt."""
    if not guided:
        return text_states, text_mask, prompt_codes, None
    b = text_states.shape[0]
    null_states, null_mask = null_condition(text_states, text_mask)
    states, mask = torch.cat([text_states, null_states]), torch.cat([text_mask, null_mask])
    if prompt_codes is None:
        return states, mask, None, None
    p = prompt_codes.shape[-1]
    pmask = torch.cat([torch.ones(b, p, dtype=mask.dtype), torch.zeros(b, p, dtype=mask.dtype)])
    return states, mask, torch.cat([prompt_codes, prompt_codes]), pmask


def forced_tokens(batch: int, codebooks: int, frames: int, continuation: torch.Tensor | None, special: int,
                  pattern: str = "delay") -> torch.Tensor:
    """The generation layout [B, streams, steps] of what each step must emit: -1 where it samples,
    else the token: the delay pattern's empty corners (special) and the continuation's known codes."""
    known = continuation.shape[-1] if continuation is not None else 0
    steps = sequence_steps(pattern, frames, codebooks)
    if pattern == "flatten":
        forced = torch.full((batch, 1, steps), -1, dtype=torch.long)
        if known:
            forced[:, 0, :known * codebooks] = flatten_pattern(continuation)
        return forced
    forced = torch.full((batch, codebooks, steps), -1, dtype=torch.long)
    for i in range(codebooks):
        forced[:, i, :i] = special
        forced[:, i, i + frames:] = special
        if known:
            forced[:, i, i:i + known] = continuation[:, i]
    return forced


def _rows(x: torch.Tensor, guided: bool) -> torch.Tensor:
    return torch.cat([x, x]) if guided else x


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

WEIGHTS_FILE = "musicgen_lite.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def codec_fingerprint(codec: TokenCodec | str | Path) -> str | None:
    """The SHA-256 of the weights file whose tokens a model predicts: a loaded codec's
    `weights_sha256`, or a Codec-Lite checkpoint directory's codebooks file (None if absent)."""
    from .codec_lite import WEIGHTS_FILE as CODEC_WEIGHTS
    from ..checkpoint import file_sha256

    if isinstance(codec, (str, Path)):
        weights = Path(codec).expanduser() / CODEC_WEIGHTS
        return file_sha256(weights) if weights.is_file() else None
    if codec.weights_sha256 is None:
        raise ValueError("this codec was built in memory (random weights or a fresh fit), so no checkpoint can name "
                         "it: load it from its files (load_codec_lite, EncodecTokenizer.from_pretrained) first")
    return codec.weights_sha256


def save_musicgen_lite(model: MusicGenLite, path, codec: TokenCodec | str | Path, extra: dict | None = None):
    """fp16 weights and a config.json with the architecture and the SHA-256 of the codec whose
    tokens the model predicts (`codec`: the codec, or the Codec-Lite directory it was loaded from)."""
    from ..checkpoint import save_fp16

    sha = codec_fingerprint(codec)
    if sha is None:
        raise FileNotFoundError(f"no Codec-Lite weights in {codec}: pass the codec the model was trained on")
    meta = {"class": "MusicGenLite", "format": FORMAT_VERSION, "config": asdict(model.config),
            "codec_sha256": sha, **(extra or {})}
    return save_fp16(model, path, weights_name=WEIGHTS_FILE, config_name=CONFIG_FILE, meta=meta)


def load_musicgen_lite(path, codec: TokenCodec | str | Path | None = None) -> MusicGenLite:
    """A trained MusicGen-Lite; errors name the fix (missing files, other class, other codec).
    `codec` (default: the committed Codec-Lite directory) is checked against the checkpoint's
    codec SHA-256 when its weights are known."""
    import json

    from ..checkpoint import load_checked
    from ..checkpoint import CHECKPOINTS

    path = Path(path).expanduser()
    codec = CHECKPOINTS / "codec_lite" if codec is None else codec
    fix = (f"Train one with `python -m accelerando.train.musicgen_lite --variant a --out {path}` "
           "or pass the directory that holds it.")
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"MusicGen-Lite checkpoint {path} lacks {CONFIG_FILE} or {WEIGHTS_FILE}. {fix}")
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("class") != "MusicGenLite" or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / CONFIG_FILE} is not a MusicGen-Lite config (class {meta.get('class')!r}). {fix}")
    sha = codec_fingerprint(codec)
    if sha is not None and sha != meta["codec_sha256"]:
        raise ValueError(f"{path} was trained on the tokens of another codec than {codec}: pass the codec it "
                         f"was trained with, or retrain ({fix})")
    model = MusicGenLite(MusicGenLiteConfig.from_dict(meta["config"]))
    load_checked(model, path / WEIGHTS_FILE, fix)
    return model.float().eval()


def frames_for(seconds: float, frame_rate: float) -> int:
    """Code frames covering `seconds` of audio."""
    return max(1, math.ceil(seconds * frame_rate))


# ---------------------------------------------------------------------------------------------
# Text (and audio prompt) to audio: the LM between the frozen text encoder and the codec
# ---------------------------------------------------------------------------------------------

CHECKPOINT_NAMES = {"a": "musicgen_lite_a", "b": "musicgen_lite_b"}


class MusicGenLitePipeline:
    """prompts -> MiniLM states -> MusicGen-Lite codes -> audio through the codec; CLAP-Lite reranking.

        pipe = MusicGenLitePipeline.from_pretrained("b")
        audio, info = pipe(["a chorale in D major for brass"], seconds=8, audio_prompt=wav, rerank=4)
        # audio [B, 1, samples] at pipe.sample_rate; info: codes, CLAP scores, timing

    The codec is any `TokenCodec` with the LM's token geometry: Codec-Lite (`from_pretrained`) or
    EnCodec (`encodec_codec.EncodecTokenizer`, for a model trained on its tokens).
    """

    def __init__(self, model: MusicGenLite, codec: TokenCodec, text_encoder=None, clap=None):
        from .text_encoder import shared_text_encoder

        if model.config.codebooks != codec.num_codebooks or model.config.codebook_size != codec.codebook_size:
            raise ValueError(f"the LM predicts {model.config.codebooks} x {model.config.codebook_size} codes, the codec "
                             f"has {codec.num_codebooks} x {codec.codebook_size}: load the codec it was trained on")
        self.model, self.codec = model.eval(), codec
        self.text_encoder = text_encoder or shared_text_encoder()
        self.clap = clap

    @classmethod
    def from_pretrained(cls, variant: str = "a", path=None, codec_path=None, autoencoder_path=None, clap_path=None
                        ) -> MusicGenLitePipeline:
        """The committed checkpoints (or the given directories). CLAP-Lite loads lazily for reranking."""
        from .codec_lite import load_codec_lite
        from ..checkpoint import CHECKPOINTS

        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}: use 'a' (text) or 'b' (text + audio prompt)")
        path = path or CHECKPOINTS / CHECKPOINT_NAMES[variant]
        codec_path = codec_path or CHECKPOINTS / "codec_lite"
        codec = load_codec_lite(codec_path, autoencoder_path)
        model = load_musicgen_lite(path, codec)
        if model.config.variant != variant:
            raise ValueError(f"{path} holds model {model.config.variant.upper()}, not {variant.upper()}")
        pipe = cls(model, codec)
        pipe._clap_path = clap_path or CHECKPOINTS / "clap_lite"
        return pipe

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def max_seconds(self) -> float:
        return self.model.config.max_frames / self.codec.frame_rate

    def prompt_codes(self, audio_prompt: torch.Tensor, sr: int) -> torch.Tensor:
        """An audio prompt [channels, samples] or [B, channels, samples] at `sr` -> codes [B, K, P]."""
        from ..audio import check_audio, resample

        wav = audio_prompt if audio_prompt.ndim == 3 else audio_prompt[None]
        checked = [check_audio(w, sr, name="audio prompt", min_seconds=2 / self.codec.frame_rate) for w in wav]
        wav = torch.stack([w.mean(0, keepdim=True) for w in checked])  # mono, as the codec was trained
        if sr != self.sample_rate:
            wav = resample(wav, sr, self.sample_rate)
        return self.codec.encode(wav)

    def scorer(self):
        if self.clap is None:
            from .clap_lite import CLAPLite

            self.clap = CLAPLite.from_pretrained(self._clap_path)
        return self.clap

    @torch.no_grad()
    def clap_scores(self, audio: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity [B] of CLAP-Lite's audio and text embeddings, clip i with prompt i."""
        clap = self.scorer()
        a = nn.functional.normalize(clap.embed_audio(audio[:, 0], self.sample_rate), dim=-1)
        t = nn.functional.normalize(clap.embed_text(list(prompts)), dim=-1)
        return (a * t).sum(-1)

    @torch.no_grad()
    def __call__(self, prompts, seconds: float = 8.0, audio_prompt: torch.Tensor | None = None,
                 audio_prompt_sr: int | None = None, guidance: float = 3.0, temperature: float = 1.0,
                 top_k: int = 250, top_p: float = 0.0, seed: int | None = 0, rerank: int = 1,
                 use_cache: bool = True, controls: str | list | None = "caption") -> tuple[torch.Tensor, dict]:
        """Audio [B, 1, samples] of `seconds` for each prompt, and info (codes, stats, CLAP scores).

        audio_prompt: model B attends to its codes; model A continues from them (the returned audio
        is then the continuation only). rerank N > 1: N candidates per prompt, the one with the
        highest CLAP-Lite score is returned. controls (models trained with them; others ignore
        it): "caption" follows the tempo, metre and key each prompt states, from the first
        generated frame (`MusicalControls.from_caption`), a list gives one `MusicalControls` (or
        None) per prompt, None generates from the text alone."""
        from .text_encoder import check_prompts

        prompts = check_prompts(prompts)
        if not 0 < seconds <= self.max_seconds + 1e-9:
            raise ValueError(f"seconds={seconds}: this model was trained on clips of up to {self.max_seconds:.2f} s; "
                             f"ask for 0 < seconds <= {self.max_seconds:.2f}")
        if rerank < 1:
            raise ValueError(f"rerank={rerank}: the number of candidates per prompt must be >= 1")
        b, n = len(prompts), rerank
        rows = [p for p in prompts for _ in range(n)]
        states, mask = self.text_encoder.encode(rows)
        frames = frames_for(seconds, self.codec.frame_rate)
        prompt = continuation = None
        if audio_prompt is not None:
            if audio_prompt_sr is None:
                raise ValueError("audio_prompt given without audio_prompt_sr: pass its sample rate in Hz")
            codes = self.prompt_codes(audio_prompt, audio_prompt_sr)
            if codes.shape[0] not in (1, b):
                raise ValueError(f"{codes.shape[0]} audio prompts for {b} text prompts: pass one, or one per prompt")
            codes = codes.expand(b, -1, -1).repeat_interleave(n, 0)
            if self.model.config.variant == "b":
                prompt = codes[..., -self.model.config.max_prompt_frames:]  # the end of a long clip
            else:
                keep = self.model.config.max_frames - frames
                if keep < 1:
                    raise ValueError(f"model A continues an audio prompt within {self.max_seconds:.2f} s; "
                                     f"{seconds} s of new audio leaves no room: ask for fewer seconds")
                continuation = codes[..., -keep:]
        total = frames + (continuation.shape[-1] if continuation is not None else 0)
        features = None
        if self.model.config.control_channels and controls is not None:
            if controls == "caption":
                controls = [MusicalControls.from_caption(p, seconds) for p in prompts]
            if isinstance(controls, str) or len(controls) != b:
                raise ValueError(f"controls={controls!r}: use 'caption', None, or one MusicalControls (or None) per prompt")
            new = torch.from_numpy(control_features(list(controls), frames, self.codec.frame_rate))
            features = nn.functional.pad(new, (total - frames, 0)).repeat_interleave(n, 0)  # none over a continuation
        codes, stats = generate(self.model, states, mask, total, prompt_codes=prompt, continuation=continuation,
                                guidance=guidance, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                use_cache=use_cache, frame_rate=self.codec.frame_rate, controls=features)
        codes = codes[..., total - frames:]
        audio = self.codec.decode(codes)
        info = {"codes": codes, "stats": stats.to_dict(), "frames": frames}
        if n > 1:
            scores = self.clap_scores(audio, rows).reshape(b, n)
            best = scores.argmax(1) + torch.arange(b) * n
            audio, info["codes"] = audio[best], codes[best]
            info["clap_candidates"], info["chosen"] = scores.tolist(), (best % n).tolist()
        return audio, info

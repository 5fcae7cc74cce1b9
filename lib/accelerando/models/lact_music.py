"""LaCT-Music: a token language model over Codec-Lite codes built from LaCT layers.

The same task and interface as MusicGen-Lite's model A (`musicgen_lite`): K code streams in the
delay pattern, one step per frame emitting one token per codebook, text conditioning from frozen
MiniLM token states, classifier-free guidance through the null condition. So
`musicgen_lite.generate` (greedy, top-k, nucleus; the cached loop), `train.musicgen_lite.token_nll`
and the MusicGen-Lite pipeline drive it unchanged; `new_cache()` returns a `ChunkProcessor`, whose
state is of fixed size however long the piece: generation streams in constant memory.

Two choices differ from MusicGen-Lite, both for sequences far longer than the training clips:
positions are rotary (relative, inside the window attention) instead of absolute, and the prompt is
not a prefix the window would slide away from but one vector, the masked mean of its MiniLM token
states projected to the model width, added to every step's input.

With `fast_weights=False` the same class is the sliding-window transformer baseline, and with a
window as long as the sequence the standard transformer: the matched baselines differ in nothing
else (`matched_baseline` sizes their feed-forward so the parameter counts match).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from .lact import ChunkProcessor, LaCTConfig, LaCTLayer, matched_layer
from .musicgen_lite import MusicGenLitePipeline


@dataclass
class LaCTMusicConfig:
    codebooks: int = 4
    codebook_size: int = 1024
    layers: int = 4
    text_dim: int = 384  # MiniLM-L6 width
    max_frames: int = 215  # the training clips' frames (10 s); the chunk must fit in them
    dropout: float = 0.1
    layer: dict | None = None  # LaCTConfig fields (dim, heads, window, chunk, fast_weights, ...)
    variant: str = "a"  # MusicGen-Lite's names, read by its generate(): text conditioning, no audio prompt
    pattern: str = "delay"
    control_channels: int = 0

    def __post_init__(self):
        self.layer = asdict(self.layer_config())
        if self.variant != "a" or self.pattern != "delay" or self.control_channels:
            raise ValueError("LaCT-Music is a text-conditioned LM in the delay pattern (variant 'a', "
                             "pattern 'delay', control_channels 0)")
        steps = self.max_frames + self.codebooks - 1
        if self.layer["fast_weights"] and self.layer["chunk"] > steps:
            raise ValueError(f"chunk={self.layer['chunk']} tokens is longer than the training context of {steps} "
                             f"steps ({self.max_frames} frames): its fast weights would never update in training; "
                             "use a smaller chunk or longer clips")

    def layer_config(self) -> LaCTConfig:
        return LaCTConfig(**(self.layer or {}))

    @property
    def hidden_size(self) -> int:
        return self.layer_config().dim

    @property
    def streams(self) -> int:
        return self.codebooks

    @classmethod
    def from_dict(cls, d: dict) -> LaCTMusicConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown LaCT-Music config fields {unknown}: this checkpoint is from another version")
        return cls(**d)


class LaCTMusicLM(nn.Module):
    """Delay-pattern codes [B, K, steps] and text -> logits [B, K, steps, codebook_size]."""

    def __init__(self, config: LaCTMusicConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embed_tokens = nn.ModuleList(nn.Embedding(config.codebook_size + 1, d) for _ in range(config.codebooks))
        self.text_proj = nn.Linear(config.text_dim, d)
        self.layers = nn.ModuleList(LaCTLayer(config.layer_config()) for _ in range(config.layers))
        self.norm = nn.RMSNorm(d)
        self.lm_heads = nn.ModuleList(nn.Linear(d, config.codebook_size, bias=False) for _ in range(config.codebooks))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for layer in self.layers:  # the learning-rate projection starts at its base rate, not at random
            if layer.config.fast_weights:
                nn.init.zeros_(layer.ttt_lr.weight)

    def condition(self, text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim], [B, L] -> [B, 1, hidden]: the masked mean of the prompt's token states."""
        m = text_mask.to(text_states.dtype)[..., None]
        return self.text_proj((text_states * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1))

    def forward(self, inputs: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
                prompt_codes: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
                cache: ChunkProcessor | None = None, past_steps: int = 0,
                controls: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, K, S, V] for the next token of each codebook at the S steps `inputs` [B, K, S]
        (MusicGen-Lite's model A interface). With a `cache` (`new_cache()`), `inputs` continue the
        `past_steps` it has already read."""
        if inputs.ndim != 3 or inputs.shape[1] != self.config.codebooks:
            raise ValueError(f"inputs of shape {tuple(inputs.shape)}: expected [batch, {self.config.codebooks}, steps]")
        if prompt_codes is not None or controls is not None:
            raise ValueError("LaCT-Music takes text only: no audio prompt (continue from codes instead) and no controls")
        processor = cache if cache is not None else self.new_cache()
        if processor.position != past_steps:
            raise ValueError(f"the cache has read {processor.position} steps, not past_steps={past_steps}")
        x = sum(self.embed_tokens[k](inputs[:, k]) for k in range(inputs.shape[1]))
        x = x + self.condition(text_states, text_mask).to(x.dtype)
        x = nn.functional.dropout(x, p=self.config.dropout, training=self.training)
        h = self.norm(processor(x))
        return torch.stack([head(h) for head in self.lm_heads], dim=1)

    def new_cache(self) -> ChunkProcessor:
        """A fresh stream state: the fast weights, unfinished chunk and window keys of every layer."""
        return ChunkProcessor(self.layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def matched_baseline(config: LaCTMusicConfig, window: int | None = None) -> LaCTMusicConfig:
    """The baseline of `config` without fast weights, of nearly equal parameter count
    (`lact.matched_layer`): a sliding-window transformer with `window`, or (None) a standard one
    whose window covers the training context."""
    reach = window if window is not None else config.max_frames + config.codebooks - 1
    return replace(config, layer=asdict(matched_layer(config.layer_config(), reach)))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

WEIGHTS_FILE = "lact_music.safetensors"
CONFIG_FILE = "config.json"


def save_lact_music(model: LaCTMusicLM, path, codec, extra: dict | None = None):
    """fp16 weights and a config.json with the architecture and the SHA-256 of the codec whose
    tokens the model predicts (`codec`: the codec, or the Codec-Lite directory it was loaded from)."""
    from ..checkpoint import save_fp16
    from .musicgen_lite import codec_fingerprint

    sha = codec_fingerprint(codec)
    if sha is None:
        raise FileNotFoundError(f"no Codec-Lite weights in {codec}: pass the codec the model was trained on")
    meta = {"class": "LaCTMusicLM", "config": asdict(model.config), "codec_sha256": sha, **(extra or {})}
    return save_fp16(model, path, weights_name=WEIGHTS_FILE, config_name=CONFIG_FILE, meta=meta)


def load_lact_music(path, codec=None) -> LaCTMusicLM:
    """A trained LaCT-Music (or baseline) model; errors name the fix (missing files, another
    class, a checkpoint of another codec's tokens)."""
    import json
    from pathlib import Path

    from ..checkpoint import CHECKPOINTS, load_checked
    from .musicgen_lite import codec_fingerprint

    path = Path(path).expanduser()
    codec = CHECKPOINTS / "codec_lite" if codec is None else codec
    fix = f"Train one with `python -m accelerando.train.lact --task music --out {path}` or pass the directory that holds it."
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"LaCT-Music checkpoint {path} lacks {CONFIG_FILE} or {WEIGHTS_FILE}. {fix}")
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("class") != "LaCTMusicLM":
        raise ValueError(f"{path / CONFIG_FILE} is not a LaCT-Music config (class {meta.get('class')!r}). {fix}")
    sha = codec_fingerprint(codec)
    if sha is not None and sha != meta["codec_sha256"]:
        raise ValueError(f"{path} predicts the tokens of another codec than {codec}: pass the codec it was trained "
                         f"with, or retrain ({fix})")
    model = LaCTMusicLM(LaCTMusicConfig.from_dict(meta["config"]))
    load_checked(model, path / WEIGHTS_FILE, fix)
    return model.float().eval()


# ---------------------------------------------------------------------------------------------
# Text to audio of any length
# ---------------------------------------------------------------------------------------------

CHECKPOINT_NAME = "lact_music"


class LaCTMusicPipeline(MusicGenLitePipeline):
    """prompts -> MiniLM states -> LaCT-Music codes -> audio through Codec-Lite, of any length.

        pipe = LaCTMusicPipeline.from_pretrained()
        audio, info = pipe(["a slow folk song in G major for strings"], seconds=60)
        # audio [B, 1, samples] at pipe.sample_rate

    MusicGen-Lite's pipeline (sampling, guidance, CLAP-Lite reranking) without its bound on length:
    the stream state is of fixed size, so a piece may run past the training clips (how well it
    holds together there is what the long-form measurements ask). Text only: no audio prompt.
    """

    @classmethod
    def from_pretrained(cls, path=None, codec_path=None, autoencoder_path=None, clap_path=None
                        ) -> LaCTMusicPipeline:
        """The committed LaCT-Music checkpoint (or the given directory: a matched baseline too)."""
        from ..checkpoint import CHECKPOINTS
        from .codec_lite import load_codec_lite

        path = path or CHECKPOINTS / CHECKPOINT_NAME
        codec_path = codec_path or CHECKPOINTS / "codec_lite"
        codec = load_codec_lite(codec_path, autoencoder_path)
        pipe = cls(load_lact_music(path, codec_path), codec)
        pipe._clap_path = clap_path or CHECKPOINTS / "clap_lite"
        return pipe

    @property
    def max_seconds(self) -> float:
        return math.inf

    @torch.no_grad()
    def __call__(self, prompts, seconds: float = 8.0, audio_prompt: torch.Tensor | None = None, **kwargs
                 ) -> tuple[torch.Tensor, dict]:
        """Audio [B, 1, samples] of `seconds` (> 0, any length) for each prompt, and info; the
        keywords are `MusicGenLitePipeline.__call__`'s."""
        if audio_prompt is not None:
            raise ValueError("LaCT-Music takes text only: generate without an audio prompt")
        if not 0 < seconds < math.inf:
            raise ValueError(f"seconds={seconds}: ask for a positive, finite length")
        return super().__call__(prompts, seconds, **kwargs)

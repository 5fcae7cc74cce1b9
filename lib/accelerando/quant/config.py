"""Quantization configs: what `quantize_` does to a model, as small validated, serialisable dataclasses.

Every method is a config class with a registered handler (`api.register_quantize_module_handler`,
torchao's pattern): `SVDQuantConfig` (smoothing + low-rank branch + 4/8-bit residual), its special
cases `RTNConfig` (round to nearest: no smoothing, no branch) and `SmoothQuantConfig` (smoothing
only), and `WeightOnlyConfig` (the weight-only baselines of other libraries: optimum-quanto,
torchao). All share `QuantConfig`: a `version`, a `skip` list, JSON-safe `to_dict` / `from_dict`.
`preset(method, ...)` gives the methods the chapter compares as `SVDQuantConfig` settings
(weight-only quantization is `act_bits=None`).

Skip patterns are matched against the *components* of a module's qualified name (split at "."),
each as a shell glob (`fnmatch`, case-sensitive): "lm_heads" skips `decoder.lm_heads.0`, "norm*"
skips `blocks.0.norm1.linear`, but "embed" does not skip `sentence_embedder.encoder.query`
(only a component named exactly "embed" would). `skip_pattern(name, skip)` says which pattern hit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import ClassVar

from .primitives import LOWRANK_BITS, SCALE_FORMATS

# Linears SVDQuant leaves in full precision (DeepCompressor's skip lists): conditioning and
# embedding projections, the first and last projections, adaLN/norm modulations; for language
# models also the output heads. Globs over path components (see the module docstring).
DEFAULT_SKIP = (
    "proj_in", "proj_out", "timestep_proj", "global_proj", "cross_attention_proj", "time_embed*",
    "embed", "embed_*", "*_embed", "*_embedding", "x_embedder", "context_embedder", "norm*", "*_norm",
    "adaLN*", "lm_head", "lm_heads", "enc_to_dec_proj",
)
# The token models (MusicGen, MusicGen-lite) also keep their conditioning projections: the text
# projection into the cross-attention memory and the audio-prompt projection.
TOKEN_SKIP = DEFAULT_SKIP + ("text_proj", "prompt_proj")


def skip_pattern(name: str, skip: tuple[str, ...]) -> str | None:
    """The first pattern of `skip` matching a component of the qualified module `name`, or None."""
    parts = name.split(".")
    return next((s for s in skip if any(fnmatchcase(part, s) for part in parts)), None)


class QuantConfig:
    """Base of every quantization config: a dataclass with `version` and `skip` fields.

    `to_dict()` is JSON-safe (tuples become lists, plus the class name under "type");
    `QuantConfig.from_dict(d)` rebuilds the config of that type (`cls.from_dict` checks it is one).
    """

    _types: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        QuantConfig._types[cls.__name__] = cls

    @property
    def needs_calibration(self) -> bool:
        """True when `quantize_` cannot run without `calib=` (activation statistics)."""
        return False

    @property
    def uses_calibration(self) -> bool:
        """True when `quantize_` records activation statistics if `calib=` is given; otherwise the
        calibration is never run."""
        return self.needs_calibration

    @property
    def input_group_size(self) -> int | None:
        """A layer's in_features must be a multiple of this (the inputs that share a scale), or None."""
        return getattr(self, "group_size", None)

    @property
    def result_config(self) -> "QuantConfig":
        """The config that describes the model after `quantize_` applied this one (stored as
        `model.quantization_config`): itself, except for steps such as QAT's."""
        return self

    def to_dict(self) -> dict:
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        return {"type": type(self).__name__, **fields}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        d = dict(d)
        kind = QuantConfig._types.get(d.pop("type", cls.__name__))
        if kind is None or not issubclass(kind, cls) or kind is QuantConfig:
            raise ValueError(f"config type {d.get('type')!r} is not a {cls.__name__}; known: {sorted(QuantConfig._types)}")
        known = {f.name for f in dataclasses.fields(kind)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {kind.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
        return kind(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

AUDIO_OBJECTIVES = ("stft_magnitude", "stft_complex")
OBJECTIVES = ("layer_mse",) + AUDIO_OBJECTIVES
BACKENDS = ("auto", "reference", "int8-cpu", "triton")
RANK_ALLOCATIONS = ("uniform", "knapsack")
RANK_GRID = (0, 8, 16, 32, 64, 128)


@dataclass
class SVDQuantConfig(QuantConfig):
    """Settings of SVDQuant-Audio (Li et al. 2025, arXiv:2411.05007, adapted to audio).

    weight_bits     4 or 8: residual weights, symmetric per group of `group_size` input channels.
    act_bits        4, 8, or None (activations stay floating point: weight-only quantization).
    group_size      input channels per scale, for weights and activations (SVDQuant: 64).
    rank            rank of the full-precision low-rank branch (0 = none; SVDQuant: 32).
    rank_allocation "uniform" (every layer gets `rank`, capped at its width; SVDQuant's) or "knapsack":
                    each layer is refit at every rank of `rank_grid` and scored by its output error
                    on the calibration rows, then the low-rank parameters a uniform `rank` spends
                    are shared out so that the summed layer error is least
                    (`accelerando.quant.allocate_ranks`). Needs calibration.
    rank_grid       the ranks "knapsack" chooses among (`rank` is always added).
    smoothing       "off"; a float alpha (lambda_j = max|X_j|^alpha / max|W_j|^(1 - alpha),
                    SmoothQuant's rule); or "search" (per-layer grid over (alpha, beta) in
                    lambda_j = max|X_j|^alpha / max|W_j|^beta, as SVDQuant).
    alpha_grid      the alphas tried by "search"; each with beta = 1 - alpha and beta = 0.
    clip_grid       scale factors of each residual group (scale = clip x absmax / qmax), tried per
                    layer together with the smoothing (1.0 alone: no clipping search). Below 1 the
                    largest weights saturate and the rest get a finer step. Keep 1.0 in the grid
                    for "never worse than no clipping" under the layer objective; a grid without
                    it always clips.
    scale_format    storage of the residual's group scales: "fp16" (SVDQuant's), or "fp8" (e4m3 per
                    group under one power-of-two scale per tensor): 4.125 instead of 4.25 bits per
                    weight at group 64.
    lowrank_bits    storage of the low-rank factors: 16 (fp16, SVDQuant's) or 8 (int8 with an fp16
                    scale per rank component). The refit, the search and the codes all see the
                    storage chosen.
    refit_iters     iterations of L <- SVD_r(W - Q(W - L)); stops early when the error stops falling.
    objective       what chooses each layer's smoothing and clipping: "layer_mse" (SVDQuant's: the layer's
                    output error on calibration inputs), or a distance between the decoded audio of
                    the model being quantized and the full-precision model's
                    (`accelerando.quant.objectives`, multi-resolution): "stft_magnitude"
                    (magnitudes only) or "stft_complex" (phase-coherent). Audio objectives re-rank
                    the `audio_candidates` best candidates by layer error.
    audio_candidates  candidates per layer an audio objective renders (each costs one render).
    act_unsigned    "auto": inputs whose calibrated minimum is >= -0.2785 (the floor of SiLU;
                    GELU's is -0.17) are shifted to >= 0 and quantized unsigned; "off": never.
    calib_tokens    rows of each layer's input kept for the search (sampled across calls, so
                    across denoising steps).
    skip            globs over the components of qualified module names left in full precision
                    (see the module docstring).
    backend         "auto" (Triton on CUDA when available, else the reference path), "reference",
                    "int8-cpu" (FBGEMM dynamic int8, W8A8 only), "triton" (W4A4 on CUDA).
    """

    weight_bits: int = 4
    act_bits: int | None = 4
    group_size: int = 64
    rank: int = 32
    rank_allocation: str = "uniform"
    rank_grid: tuple[int, ...] = RANK_GRID
    smoothing: str | float = "search"
    alpha_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    clip_grid: tuple[float, ...] = (1.0,)
    scale_format: str = "fp16"
    lowrank_bits: int = 16
    refit_iters: int = 8
    objective: str = "layer_mse"
    audio_candidates: int = 3
    act_unsigned: str = "auto"
    calib_tokens: int = 512
    skip: tuple[str, ...] = DEFAULT_SKIP
    backend: str = "auto"
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        if self.weight_bits not in (4, 8):
            raise ValueError(f"weight_bits={self.weight_bits}: use 4 or 8")
        if self.act_bits not in (4, 8, 16, None):
            raise ValueError(f"act_bits={self.act_bits}: use 4, 8, or None/16 for floating-point activations")
        if self.act_bits == 16:
            self.act_bits = None
        if self.group_size < 2 or self.group_size % 2:
            raise ValueError(f"group_size={self.group_size}: use an even size such as 64")
        if not 0 <= self.rank <= 1024:
            raise ValueError(f"rank={self.rank}: use 0 (no low-rank branch) to a few hundred")
        if self.rank_allocation not in RANK_ALLOCATIONS:
            raise ValueError(f"rank_allocation={self.rank_allocation!r}: use one of {RANK_ALLOCATIONS}")
        self.rank_grid = tuple(sorted({int(r) for r in self.rank_grid} | {self.rank}))
        if self.rank_grid[0] < 0:
            raise ValueError(f"rank_grid={self.rank_grid}: ranks are >= 0, e.g. {RANK_GRID}")
        if isinstance(self.smoothing, str):
            if self.smoothing not in ("off", "search"):
                raise ValueError(f"smoothing={self.smoothing!r}: use 'off', 'search' or an alpha in [0, 1]")
        elif not 0.0 <= float(self.smoothing) <= 1.0:
            raise ValueError(f"smoothing alpha {self.smoothing} is outside [0, 1]")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}: use one of {OBJECTIVES}")
        if self.audio_candidates < 1:
            raise ValueError(f"audio_candidates={self.audio_candidates}: at least 1")
        if self.act_unsigned not in ("auto", "off"):
            raise ValueError(f"act_unsigned={self.act_unsigned!r}: use 'auto' or 'off'")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: use one of {BACKENDS}")
        if self.backend == "int8-cpu" and (self.weight_bits, self.act_bits) != (8, 8):
            raise ValueError("backend='int8-cpu' runs W8A8 only (FBGEMM); set weight_bits=8, act_bits=8")
        if self.scale_format not in SCALE_FORMATS:
            raise ValueError(f"scale_format={self.scale_format!r}: use one of {SCALE_FORMATS}")
        if self.lowrank_bits not in LOWRANK_BITS:
            raise ValueError(f"lowrank_bits={self.lowrank_bits}: use 16 (fp16 factors) or 8 (int8 per row)")
        self.alpha_grid = tuple(float(a) for a in self.alpha_grid)
        self.clip_grid = tuple(dict.fromkeys(float(c) for c in self.clip_grid))
        if not self.clip_grid or not all(0.0 < c <= 1.0 for c in self.clip_grid):
            raise ValueError(f"clip_grid={self.clip_grid}: fractions of the group's absmax in (0, 1], e.g. (1.0, 0.9, 0.8)")
        self.skip = tuple(self.skip)

    @property
    def needs_calibration(self) -> bool:
        """Smoothing, a clipping search and a knapsack rank allocation (both scored by layer output
        error) need activation statistics; without them the quantizer is data-free."""
        return self.smoothing != "off" or len(self.clip_grid) > 1 or self.rank_allocation == "knapsack"

    @property
    def uses_calibration(self) -> bool:
        """Also quantized activations use statistics when given (`act_unsigned="auto"`: inputs bounded
        below, as after GELU, get unsigned codes); weight-only RTN never runs `calib`."""
        return self.needs_calibration or (self.act_bits is not None and self.act_unsigned == "auto")

    @property
    def name(self) -> str:
        """Short label, e.g. 'W4A4 r32 smooth=search' (with ' clip=1/0.9/0.8' when clipping is searched,
        ' scales=fp8' and ' branch=int8' for the compact storage, ' ranks=knapsack' for a rank per layer,
        with its grid when it is not `RANK_GRID`)."""
        a = "16" if self.act_bits is None else str(self.act_bits)
        clip = "" if self.clip_grid == (1.0,) else f" clip={'/'.join(f'{c:g}' for c in self.clip_grid)}"
        scales = "" if self.scale_format == "fp16" else f" scales={self.scale_format}"
        branch = "" if self.lowrank_bits == 16 else f" branch=int{self.lowrank_bits}"
        ranks = ""
        if self.rank_allocation != "uniform":
            grid = "" if self.rank_grid == tuple(sorted(set(RANK_GRID) | {self.rank})) else f"({'/'.join(map(str, self.rank_grid))})"
            ranks = f" ranks={self.rank_allocation}{grid}"
        return f"W{self.weight_bits}A{a} r{self.rank}{ranks} smooth={self.smoothing}{clip}{scales}{branch}"



@dataclass
class RTNConfig(SVDQuantConfig):
    """Round to nearest: `SVDQuantConfig` without smoothing and without a low-rank branch."""

    rank: int = 0
    smoothing: str | float = "off"

    def __post_init__(self):
        super().__post_init__()
        if self.rank or self.smoothing != "off" or self.rank_allocation != "uniform":
            raise ValueError("RTNConfig has no smoothing and no low-rank branch: use SVDQuantConfig for those")


@dataclass
class SmoothQuantConfig(SVDQuantConfig):
    """SmoothQuant (Xiao et al. 2023): per-channel smoothing, no low-rank branch (`smoothing` an
    alpha or "search")."""

    rank: int = 0
    smoothing: str | float = "search"

    def __post_init__(self):
        super().__post_init__()
        if self.rank or self.smoothing == "off" or self.rank_allocation != "uniform":
            raise ValueError("SmoothQuantConfig smooths and has no low-rank branch: use RTNConfig or SVDQuantConfig")


EXTERNAL_METHODS = ("torchao-w8", "quanto-w8", "quanto-w4")


@dataclass
class WeightOnlyConfig(QuantConfig):
    """A weight-only quantizer from another library, applied to the layers `SVDQuantConfig` would
    quantize (same `skip`): library "quanto" (optimum-quanto qint4/qint8) or "torchao"
    (`Int8WeightOnlyConfig`; torchao's int4 path needs GPU kernels). Activations stay floating point.
    `WeightOnlyConfig.from_method("quanto-w4")` reads the method names of `EXTERNAL_METHODS`."""

    library: str = "quanto"
    weight_bits: int = 4
    skip: tuple[str, ...] = DEFAULT_SKIP
    version: int = 1

    def __post_init__(self):
        if self.method not in EXTERNAL_METHODS:
            raise ValueError(f"library={self.library!r}, weight_bits={self.weight_bits}: use one of {EXTERNAL_METHODS}")
        self.skip = tuple(self.skip)

    @property
    def method(self) -> str:
        return f"{self.library}-w{self.weight_bits}"

    @property
    def name(self) -> str:
        return self.method

    @classmethod
    def from_method(cls, method: str, **overrides) -> "WeightOnlyConfig":
        if method not in EXTERNAL_METHODS:
            raise ValueError(f"unknown external method {method!r}: use one of {EXTERNAL_METHODS}")
        library, bits = method.split("-w")
        return cls(library=library, weight_bits=int(bits), **overrides)


INT8_PACK_INPUT_BLOCK = 16  # in_features of an `aten._weight_int8pack_mm` layer must be a multiple


@dataclass
class PackedWeightOnlyConfig(QuantConfig):
    """Weight-only quantization in PyTorch's packed CPU layouts, for token-by-token decoding, where
    the weight bytes read per token bound the speed: W8A16 (int8 codes per output channel,
    `aten._weight_int8pack_mm`) or W4A16 (4-bit codes in groups of `group_size` inputs with a
    scale and zero each, `aten._weight_int4pack_mm_for_cpu`), activations bf16. The quantized
    model scores and runs through the same kernels, so its fidelity rows and its timings are of
    the same numerics. No calibration (round to nearest)."""

    weight_bits: int = 8
    group_size: int = 64  # inputs per 4-bit scale/zero pair (8-bit: one scale per output channel)
    skip: tuple[str, ...] = DEFAULT_SKIP
    version: int = 1

    def __post_init__(self):
        if self.weight_bits not in (4, 8):
            raise ValueError(f"weight_bits={self.weight_bits}: the packed CPU kernels take 4 or 8")
        if self.weight_bits == 4 and self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"group_size={self.group_size}: the int4 kernel takes 32, 64, 128 or 256")
        self.skip = tuple(self.skip)

    @property
    def input_group_size(self) -> int:
        # 8 bits has one scale per output channel, but the x86 int8 kernel reads inputs in blocks of
        # 16 and crashes the process on other widths, so such layers are skipped with that reason
        return self.group_size if self.weight_bits == 4 else INT8_PACK_INPUT_BLOCK

    @property
    def name(self) -> str:
        return f"packed w{self.weight_bits}a16" + (f" g{self.group_size}" if self.weight_bits == 4 else "")


def preset(method: str, weight_bits: int = 4, act_bits: int | None = 4, **overrides) -> SVDQuantConfig:
    """The methods the benchmark compares, at one bit width:
    "rtn" (round to nearest), "smoothquant" (smoothing only), "svd" (low-rank only), "svdquant"."""
    settings = {
        "rtn": dict(smoothing="off", rank=0),
        "smoothquant": dict(smoothing="search", rank=0),
        "svd": dict(smoothing="off", rank=32),
        "svdquant": dict(smoothing="search", rank=32),
    }
    if method not in settings:
        raise ValueError(f"unknown method {method!r}: use one of {sorted(settings)}")
    return SVDQuantConfig(weight_bits=weight_bits, act_bits=act_bits, **{**settings[method], **overrides})


PRESETS = ("rtn", "smoothquant", "svd", "svdquant")

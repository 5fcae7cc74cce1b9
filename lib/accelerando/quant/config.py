"""`SVDQuantConfig`: what `quantize_` does to a model, as a small validated, serialisable dataclass.

The baselines the chapter compares are settings of the same config (see `PRESETS`):
RTN (no smoothing, no low-rank branch), SmoothQuant (smoothing only), SVD (low-rank only), and
SVDQuant (both). Weight-only quantization is `act_bits=None`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .primitives import LOWRANK_BITS, SCALE_FORMATS

# Linears SVDQuant leaves in full precision (DeepCompressor's skip lists): conditioning and
# embedding projections, the first and last projections, adaLN/norm modulations; for language
# models also the output heads. Matched as substrings of the module's qualified name.
DEFAULT_SKIP = (
    "proj_in", "proj_out", "timestep_proj", "global_proj", "cross_attention_proj", "time_embed",
    "embed", "norm", "adaLN", "lm_head", "enc_to_dec_proj",
)

AUDIO_OBJECTIVES = ("stft_magnitude", "stft_complex")
OBJECTIVES = ("layer_mse",) + AUDIO_OBJECTIVES
BACKENDS = ("auto", "reference", "int8-cpu", "triton")
RANK_ALLOCATIONS = ("uniform", "knapsack")
RANK_GRID = (0, 8, 16, 32, 64, 128)


@dataclass
class SVDQuantConfig:
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
    skip            substrings of qualified module names left in full precision.
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

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SVDQuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SVDQuantConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


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

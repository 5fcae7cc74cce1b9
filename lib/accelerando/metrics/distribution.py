"""Distribution metrics between a reference set and a generated set of embeddings.

Inputs are embedding sets: either one array [N, dim] (each row its own unit) or a list of
per-clip arrays [frames_i, dim] (rows of one clip stay together when bootstrapping). Which
embedding produced them is the caller's business (see `embeddings`).

- FAD (Kilgour et al. 2019): Fréchet distance between Gaussians fitted to the two sets,
  FAD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2). Biased upward by a term ~1/n: two
  sets drawn from one distribution score > 0, more so with few samples. So a FAD carries its n
  (vectors in the generated set; `extra["n_ref"]` for the reference) and `compare_fad` refuses
  to compare FADs of different n.
- FAD-inf (Gui et al. 2024, fadtk): FAD of `steps` random subsets (drawn with replacement) of
  sizes n from min_n to N, a least-squares line FAD = a + b/n, and the intercept a (FAD at
  n -> inf) as the score.
- KAD (Chung et al. 2025, kadtk): unbiased MMD^2 with a Gaussian kernel
  k(x, y) = exp(-|x - y|^2 / (2 h^2)), h = median pairwise distance within the reference set,
  KAD = 100 * [mean_{i!=j} k(r_i, r_j) + mean_{i!=j} k(g_i, g_j) - 2 mean_{i,j} k(r_i, g_j)].
  Unbiased, so it can be slightly negative when the sets match.

Intervals for FAD and KAD bootstrap the generated clips (the reference stays fixed). Resampling
with replacement duplicates clips, which raises FAD's small-sample bias: read the interval as the
spread of the score, not as a bias-corrected estimate.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import linalg
from scipy import stats as sps
from scipy.spatial.distance import pdist

from .stats import CONFIDENCE, Estimate, percentile_interval, require_finite

log = logging.getLogger(__name__)

EmbeddingSet = np.ndarray | Sequence[np.ndarray]
KAD_SCALE = 100.0  # kadtk reports MMD^2 x 100
N_BOOT = 200  # each FAD resample costs an eigendecomposition of a dim x dim matrix
MAX_BANDWIDTH_ROWS = 5000  # median distance from a seeded subset beyond this (pdist is O(N^2) memory)
MAX_KAD_CLIPS = 5000  # KAD's clip bootstrap keeps a [clips x clips] matrix


def _stack(emb: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """(rows [N, dim] float64, clip index of each row [N])."""
    if isinstance(emb, np.ndarray):
        if emb.ndim != 2:
            raise ValueError(f"an embedding set must be [N, dim] or a list of [frames, dim], got shape {emb.shape}")
        return emb.astype(np.float64), np.arange(len(emb))
    clips = [np.asarray(e, dtype=np.float64) for e in emb]
    if not clips or any(c.ndim != 2 or len(c) == 0 for c in clips):
        raise ValueError("an embedding set needs at least one clip, each [frames >= 1, dim]")
    return np.concatenate(clips), np.repeat(np.arange(len(clips)), [len(c) for c in clips])


def _check_sets(r: np.ndarray, g: np.ndarray) -> None:
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"embedding dims differ: reference {r.shape[1]}, generated {g.shape[1]}")
    for name, x in (("reference", r), ("generated", g)):
        if len(x) < 2:
            raise ValueError(f"{name} set has {len(x)} embedding vector(s); a covariance needs at least 2")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} embeddings contain NaN or Inf")


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [dim] and unbiased covariance [dim, dim] of rows [N, dim]."""
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, *, sqrt_cov1=None) -> float:
    """|mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^1/2), clipped at 0 (rounding can dip below).

    Tr (cov1 cov2)^1/2 = Tr (C cov2 C)^1/2 with C = cov1^1/2: the second matrix is symmetric PSD,
    so its eigenvalues are real and >= 0, whereas scipy.linalg.sqrtm of the non-symmetric product
    returns complex round-off and fails on singular covariances (n < dim).
    """
    c = _sqrt_psd(cov1) if sqrt_cov1 is None else sqrt_cov1
    ev = linalg.eigvalsh(c @ cov2 @ c)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt))


def _clip_rows(clip_ids: np.ndarray) -> list[np.ndarray]:
    """Row indices of each clip (clip ids from `_stack`, sorted)."""
    starts = np.flatnonzero(np.r_[True, np.diff(clip_ids) != 0])
    return np.split(np.arange(len(clip_ids)), starts[1:])


def fad(ref: EmbeddingSet, gen: EmbeddingSet, *, n_boot: int = N_BOOT, seed: int = 0, embedding: str | None = None) -> Estimate:
    """Fréchet Audio Distance of the generated set to the reference set.

    Returns Estimate(value, ci_low, ci_high, n = generated vectors, extra = n_ref, clip counts,
    dim, embedding). `n_boot=0` skips the interval. Warns when n < dim (rank-deficient covariance:
    the score is then dominated by sample-size bias).
    """
    r, _ = _stack(ref)
    g, g_clips = _stack(gen)
    _check_sets(r, g)
    dim = r.shape[1]
    if min(len(r), len(g)) < dim:
        log.warning("FAD with fewer vectors (ref %d, gen %d) than dimensions (%d): covariances are singular "
                    "and the score is dominated by sample-size bias", len(r), len(g), dim)
    mu_r, cov_r = gaussian_stats(r)
    sqrt_r = _sqrt_psd(cov_r)
    value = frechet_distance(mu_r, cov_r, *gaussian_stats(g), sqrt_cov1=sqrt_r)
    lo = hi = None
    n_gen_clips = len(np.unique(g_clips))
    if n_boot and n_gen_clips > 1:
        rng, rows = np.random.default_rng(seed), _clip_rows(g_clips)
        draws = (np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))]) for _ in range(n_boot))
        boot = [frechet_distance(mu_r, cov_r, *gaussian_stats(g[idx]), sqrt_cov1=sqrt_r) for idx in draws]
        lo, hi = percentile_interval(np.asarray(boot), CONFIDENCE)
    extra = {"n_ref": len(r), "n_gen_clips": n_gen_clips, "dim": dim, "embedding": embedding}
    return Estimate(require_finite(value, "FAD"), lo, hi, n=len(g), method="bootstrap over generated clips", extra=extra)


def compare_fad(a: Estimate, b: Estimate, *, strict: bool = True) -> float:
    """a.value - b.value, only if both FADs rest on the same sample counts (n and n_ref).

    FAD's bias depends on n, so a difference between FADs at different n mixes quality with set
    size: raises ValueError (strict) or warns. Subsample to equal n, or compare FAD-inf instead.
    """
    na, nb = (a.n, a.extra.get("n_ref")), (b.n, b.extra.get("n_ref"))
    if na != nb:
        msg = (f"comparing FADs computed at different sample counts (n_gen, n_ref) = {na} vs {nb}: FAD is biased "
               f"by n, so the difference mixes quality with set size; subsample to equal n or use fad_inf")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return a.value - b.value


def fad_inf(ref: EmbeddingSet, gen: EmbeddingSet, *, steps: int = 25, min_n: int | None = None, seed: int = 0,
            embedding: str | None = None) -> Estimate:
    """FAD extrapolated to infinite sample size (fadtk's FAD-inf).

    For `steps` sizes n evenly spaced from `min_n` (default min(500, N // 2)) to N, in order,
    draw n generated vectors with replacement (rng = np.random.default_rng(seed); indices
    rng.choice(N, n, replace=True)) and compute FAD against the full reference; fit
    FAD(n) = value + slope / n by least squares (np.polyfit on 1/n). The interval is the fit's
    95% t-interval on the intercept (needs >= 4 sizes). extra: slope, r2, points [[n, FAD]].
    """
    r, _ = _stack(ref)
    g, _ = _stack(gen)
    _check_sets(r, g)
    big_n = len(g)
    min_n = min(500, big_n // 2) if min_n is None else min_n
    if not 2 <= min_n < big_n:
        raise ValueError(f"FAD-inf needs 2 <= min_n < N; got min_n={min_n}, N={big_n} generated vectors")
    if min_n <= r.shape[1]:
        # Below n = dim the subset covariances are singular and FAD(n) is far from linear in 1/n:
        # the intercept would be a number without meaning.
        raise ValueError(f"FAD-inf needs subsets larger than the embedding dimension (min_n={min_n} <= dim={r.shape[1]}): "
                         f"use more or longer clips, or a lower-dimensional embedding")
    ns = np.unique(np.linspace(min_n, big_n, steps).astype(int))
    if len(ns) < 3:
        raise ValueError(f"FAD-inf needs at least 3 distinct subset sizes, got {ns.tolist()}")
    mu_r, cov_r = gaussian_stats(r)
    sqrt_r = _sqrt_psd(cov_r)
    rng = np.random.default_rng(seed)
    ys = np.array([frechet_distance(mu_r, cov_r, *gaussian_stats(g[rng.choice(big_n, n, replace=True)]), sqrt_cov1=sqrt_r)
                   for n in ns])
    xs = 1.0 / ns
    (slope, intercept) = np.polyfit(xs, ys, 1)
    resid = ys - (slope * xs + intercept)
    ss_tot = np.sum((ys - ys.mean()) ** 2)
    r2 = float(1 - np.sum(resid**2) / ss_tot) if ss_tot > 0 else 1.0
    lo = hi = None
    if len(ns) >= 4:
        _, cov = np.polyfit(xs, ys, 1, cov=True)
        half = sps.t.ppf(0.5 + CONFIDENCE / 2, len(ns) - 2) * np.sqrt(cov[1, 1])
        lo, hi = float(intercept - half), float(intercept + half)
    extra = {"slope": float(slope), "r2": r2, "points": [[int(n), float(y)] for n, y in zip(ns, ys)],
             "n_ref": len(r), "embedding": embedding}
    return Estimate(require_finite(intercept, "FAD-inf"), lo, hi, n=big_n, method="linear fit in 1/n, t-interval", extra=extra)


def median_pairwise_distance(x: np.ndarray, *, seed: int = 0) -> float:
    """Median Euclidean distance between distinct rows of x [N, dim] (a seeded subset of
    MAX_BANDWIDTH_ROWS rows when N is larger)."""
    if len(x) > MAX_BANDWIDTH_ROWS:
        x = x[np.random.default_rng(seed).choice(len(x), MAX_BANDWIDTH_ROWS, replace=False)]
    return float(np.median(pdist(x)))


def _kernel_sums(x: np.ndarray, x_ids: np.ndarray, y: np.ndarray, y_ids: np.ndarray, gamma: float, chunk: int = 1024) -> np.ndarray:
    """S[a, b] = sum over rows i of clip a in x and rows j of clip b in y of exp(-gamma |x_i - y_j|^2).

    Clip ids must be sorted (as `_stack` makes them). Row blocks keep memory at chunk x N; the
    per-clip sums are what the clip bootstrap needs ([clips_x, clips_y]).
    """
    y_starts = np.flatnonzero(np.r_[True, np.diff(y_ids) != 0])
    ysq = np.einsum("ij,ij->i", y, y)
    out = np.zeros((x_ids.max() + 1, len(y_starts)))
    for s in range(0, len(x), chunk):
        xb = x[s:s + chunk]
        d2 = np.clip(np.einsum("ij,ij->i", xb, xb)[:, None] + ysq[None] - 2 * xb @ y.T, 0, None)
        np.add.at(out, x_ids[s:s + chunk], np.add.reduceat(np.exp(-gamma * d2), y_starts, axis=1))
    return out


def kad(ref: EmbeddingSet, gen: EmbeddingSet, *, bandwidth: float | None = None, n_boot: int = N_BOOT, seed: int = 0,
        embedding: str | None = None) -> Estimate:
    """Kernel Audio Distance: 100 x unbiased MMD^2, Gaussian kernel (see the module docstring).

    bandwidth h defaults to the median pairwise distance of the reference set. Returns
    Estimate(value, ci over generated clips, n = generated vectors, extra = n_ref, bandwidth).
    """
    r, _ = _stack(ref)
    g, g_clips = _stack(gen)
    _check_sets(r, g)
    if g_clips[-1] + 1 > MAX_KAD_CLIPS:
        raise ValueError(f"KAD keeps a [clips x clips] kernel-sum matrix: {g_clips[-1] + 1} generated units is too many; "
                         f"pass per-clip arrays (a list) rather than one row per unit")
    h = median_pairwise_distance(r, seed=seed) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"KAD bandwidth must be > 0, got {h} (are all reference embeddings identical?)")
    gamma = 1.0 / (2 * h**2)
    zeros_r = np.zeros(len(r), dtype=int)
    k_rr = _kernel_sums(r, zeros_r, r, zeros_r, gamma)[0, 0] - len(r)  # drop the diagonal, k(x, x) = 1
    s_gg = _kernel_sums(g, g_clips, g, g_clips, gamma)  # [clips, clips]
    s_rg = _kernel_sums(r, zeros_r, g, g_clips, gamma)[0]  # [clips]
    sizes = np.bincount(g_clips).astype(float)
    mean_rr = k_rr / (len(r) * (len(r) - 1))

    def score(counts: np.ndarray) -> float:
        # counts[c]: how often clip c is drawn. Off-diagonal sum over drawn rows: every pair of
        # draws contributes S[a, b]; a draw paired with itself loses only its frame diagonal.
        n = counts @ sizes
        gg = counts @ s_gg @ counts - counts @ sizes
        return KAD_SCALE * (mean_rr + gg / (n * (n - 1)) - 2 * (counts @ s_rg) / (len(r) * n))

    value = score(np.ones(len(sizes)))
    lo = hi = None
    if n_boot and len(sizes) > 1:
        rng = np.random.default_rng(seed)
        boot = [score(np.bincount(rng.integers(0, len(sizes), len(sizes)), minlength=len(sizes)).astype(float))
                for _ in range(n_boot)]
        lo, hi = percentile_interval(np.asarray(boot), CONFIDENCE)
    extra = {"n_ref": len(r), "n_gen_clips": len(sizes), "bandwidth": h, "embedding": embedding}
    return Estimate(require_finite(value, "KAD"), lo, hi, n=len(g), method="bootstrap over generated clips", extra=extra)

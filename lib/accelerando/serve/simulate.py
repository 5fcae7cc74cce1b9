"""A discrete-event simulation of many requests on a cluster, driven by the serving policy itself.

    arrivals = poisson_arrivals(rate_per_s=2.0, duration_s=3600, seed=0)
    rows = simulate(Router(service, {"full": 64, "w4a4": 32, "fewer-steps": 32}), arrivals)
    summary(rows)        # per tier: p50/p95/p99 latency, rejected share, variant shares

Requests arrive as a Poisson process with a tier mix and a duration mix; each is routed at its
arrival by a `Router` (the same object the server uses), which books its sub-tasks on the
replicas' timelines. Service times are the `ServiceTable`'s, deterministic: a simulation, labelled
as such, of what the policy does when the cost model is right. Policies to compare are routers
built differently: `fifo_router` (every request the best variant, no reservation, no rejection)
and `priority_router` (tiers' reservations and targets, the best variant only), against the
cost-aware default (`Router` with the tiers' variant lists).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .policy import DEFAULT_TIERS, QUALITY_ORDER, MusicRequest, Router, ServiceTable, Tier, decompose

FRAME_RATE = 44100 / 2048  # Stable Audio Open's latent frames per second of audio

DEFAULT_MIX = {"premium": 0.1, "standard": 0.3, "free": 0.6}
DEFAULT_SECONDS = (10.0, 30.0, 60.0, 120.0)


def poisson_arrivals(rate_per_s: float, duration_s: float, tier_mix: dict[str, float] = DEFAULT_MIX,
                     seconds: tuple[float, ...] = DEFAULT_SECONDS, seed: int = 0) -> list[tuple[float, MusicRequest]]:
    """(arrival time in s, request) for a Poisson process of `rate_per_s` over `duration_s`; tiers
    drawn from `tier_mix` (shares summing to 1), durations uniformly from `seconds`."""
    if not (rate_per_s > 0 and duration_s > 0):
        raise ValueError(f"rate_per_s={rate_per_s}, duration_s={duration_s}: both must be positive")
    if abs(sum(tier_mix.values()) - 1) > 1e-9:
        raise ValueError(f"tier shares {tier_mix} sum to {sum(tier_mix.values())}, not 1")
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1 / rate_per_s, size=int(rate_per_s * duration_s * 1.5) + 10))
    times = times[times < duration_s]
    tiers = rng.choice(list(tier_mix), size=len(times), p=list(tier_mix.values()))
    lengths = rng.choice(seconds, size=len(times))
    return [(float(t), MusicRequest(f"simulated request {i}", float(s), str(tier), f"sim-{i}"))
            for i, (t, tier, s) in enumerate(zip(times, tiers, lengths))]


def saturation_rate(service: ServiceTable, replicas: int, variant: str = "full",
                    seconds: tuple[float, ...] = DEFAULT_SECONDS, section_seconds: float = 10.0) -> float:
    """Arrivals per second at which `replicas` replicas of `variant` are busy all the time when every
    request runs on it, durations drawn uniformly from `seconds`: the most a first-come-first-served
    cluster on that variant can bear. Loads are read as multiples of it."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas}: at least one replica of {variant!r}")
    work = [sum(service.seconds(t, variant) for t in decompose(MusicRequest("", s, "free"), section_seconds)
                if t.kind == "synthesis") for s in seconds]
    return replicas / float(np.mean(work))


def simulate(router: Router, arrivals: list[tuple[float, MusicRequest]]) -> list[dict]:
    """Route every arrival in time order; a row per request: tier, seconds, accepted, status,
    variant, latency_s (predicted finish minus arrival; None when rejected)."""
    rows = []
    for now, request in sorted(arrivals, key=lambda a: a[0]):
        d = router.route(request, now)
        rows.append({"id": request.id, "tier": request.tier, "seconds": request.seconds, "arrival_s": now,
                     "accepted": d.accepted, "status": d.status, "variant": d.variant,
                     "latency_s": None if d.predicted_finish is None else d.predicted_finish - now})
    return rows


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per tier: requests, rejected share, latency percentiles of the accepted (s), and the share
    of accepted requests each variant served."""
    out = {}
    for tier in dict.fromkeys(r["tier"] for r in rows):
        mine = [r for r in rows if r["tier"] == tier]
        served = [r for r in mine if r["accepted"]]
        lat = np.array([r["latency_s"] for r in served]) if served else np.array([np.nan])
        out[tier] = {"requests": len(mine), "rejected_share": 1 - len(served) / len(mine),
                     **{f"p{q}_s": float(np.percentile(lat, q)) for q in (50, 95, 99)},
                     **{f"share_{v}": sum(r["variant"] == v for r in served) / max(1, len(served))
                        for v in dict.fromkeys(r["variant"] for r in served)}}
    return out


def fifo_router(service: ServiceTable, replicas: dict[str, int], tiers: dict[str, Tier] = DEFAULT_TIERS) -> Router:
    """First come, first served on the best deployed variant: no reservation, no target, no rejection."""
    best = next(v for v in QUALITY_ORDER if v in replicas)
    open_tiers = {n: Tier(n, float("inf"), (best,)) for n in tiers}
    return Router(service, replicas, open_tiers)


def priority_router(service: ServiceTable, replicas: dict[str, int], tiers: dict[str, Tier] = DEFAULT_TIERS) -> Router:
    """The tiers' reservations and targets (so admission control), but the best variant only."""
    best = next(v for v in QUALITY_ORDER if v in replicas)
    return Router(service, replicas, {n: replace(t, variants=(best,)) for n, t in tiers.items()})


def predicted_service(config: dict, device, steps: dict[str, int], section_seconds: float = 10.0,
                      efficiency: float = 1.0) -> ServiceTable:
    """A `ServiceTable` from the cost model: a section of `section_seconds` costs its variant's
    `steps` single-device DiT steps (`distributed.dit_step_flops`, the classifier-free-guidance
    batch of two) at `efficiency` x the device's rate; plan and lyrics keep the table's defaults.
    With a published peak as the device, it is a projection and says so in its use."""
    from ..distributed import dit_step_flops

    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency={efficiency}: a share of the device's rate, in (0, 1]")
    frames = int(round(section_seconds * FRAME_RATE))
    step_s = dit_step_flops(config, frames) / (device.flops_per_s * efficiency)
    return ServiceTable({variant: n * step_s / section_seconds for variant, n in steps.items()})

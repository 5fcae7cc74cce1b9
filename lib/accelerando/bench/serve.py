"""Load test of the serving application: an open-loop arrival sweep across tiers, bounded in count and time.

    python -m accelerando.bench serve --json                        # starts the server on a local Ray
    python -m accelerando.bench serve --url http://host:8000 --json # drives a running one
    python -m accelerando.bench serve --kill-replica full --json    # the fault test: one replica dies mid-load

Requests arrive as a Poisson process at each rate of the sweep for `phase_s` seconds (open loop:
an arrival never waits for an earlier answer), tiers drawn from a mix, durations from a list.
Every request is answered or times out on the client (`client_timeout_s`), and the sweep stops by
itself. Rows: per rate and tier, the answers by status, latency percentiles of the completed,
the variants that served them; then the count check against the server's ledger: every request
sent is answered, accepted = completed + failed, and the client's counts equal the ledger's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..serve.simulate import DEFAULT_MIX, poisson_arrivals

PROMPTS = ("a waltz in D major at 90 BPM for strings", "a folk song in A minor with lyrics about the sea",
           "a march for brass in B flat major at 120 BPM", "a slow piano piece in E minor")


def arrival_plan(rates_per_s: list[float], phase_s: float, max_requests: int, tier_mix: dict[str, float],
                 seconds: tuple[float, ...], seed: int = 0) -> list[dict]:
    """(time, rate, body) of every request: the simulation's Poisson arrivals (`poisson_arrivals`)
    at each rate for `phase_s`, one phase after another, at most `max_requests` in all."""
    run = uuid.uuid4().hex[:8]  # ids unique across runs against one server, whose ledger refuses a repeated id
    out = []
    for phase, rate in enumerate(rates_per_s):
        for t, request in poisson_arrivals(rate, phase_s, tier_mix, seconds, seed=seed + phase):
            if len(out) == max_requests:
                return out
            body = {"prompt": PROMPTS[len(out) % len(PROMPTS)], "seconds": request.seconds, "tier": request.tier,
                    "id": f"load-{run}-{len(out)}"}
            out.append({"at_s": phase * phase_s + t, "rate_per_s": rate, "body": body})
    return out


async def _drive(url: str, plan: list[dict], client_timeout_s: float, kill: tuple[float, str] | None) -> list[dict]:
    import httpx

    results = []
    async with httpx.AsyncClient(base_url=url, timeout=client_timeout_s) as client:
        start = time.monotonic()

        async def one(item):
            await asyncio.sleep(max(0.0, item["at_s"] - (time.monotonic() - start)))
            sent = time.monotonic()
            try:
                r = await client.post("/generate", json=item["body"])
                answer = r.json()
                row = {"status": r.status_code, "state": answer.get("state"), "variant": answer.get("variant"),
                       "error": answer.get("error"),
                       "retried": any(s["attempts"] > 1 for s in answer.get("sections", []))}
            except httpx.HTTPError as err:
                row = {"status": None, "state": "unanswered", "variant": None, "error": repr(err), "retried": False}
            results.append({**row, "id": item["body"]["id"], "tier": item["body"]["tier"],
                            "seconds": item["body"]["seconds"], "rate_per_s": item["rate_per_s"],
                            "sent_s": sent - start, "latency_s": time.monotonic() - sent})

        async def killer():
            from ..serve.app import kill_replica

            # not before kill_at_s, and only while every replica of the variant runs a section, so
            # that the kill interrupts one and the front has to retry it; none after the last arrival
            at_s, variant = kill
            await asyncio.sleep(at_s)
            replicas = (await client.get("/health")).json()["replicas"].get(variant, 0)
            while time.monotonic() - start < plan[-1]["at_s"]:
                running = (await client.get("/ledger")).json()["running"].get(variant, 0)
                if replicas and running >= replicas:
                    results.append({"event": "killed", "replica": await asyncio.to_thread(kill_replica, variant),
                                    "at_s": time.monotonic() - start, "sections_running": running})
                    return
                await asyncio.sleep(0.2)
            results.append({"event": "not killed", "at_s": time.monotonic() - start,
                            "reason": f"no moment when all {replicas} {variant} replica(s) were busy"})

        await asyncio.gather(*[one(item) for item in plan], *([killer()] if kill else []))
    return results


def summarize(results: list[dict], ledger: dict, targets: dict[str, float]) -> list[dict]:
    """Rows per (rate, tier) and the count check (component "serve_accounting") of the client's
    answers against the server's ledger rows (`GET /ledger?rows=true`) of the same request ids."""
    answers = [r for r in results if "event" not in r]
    rows = []
    for rate in sorted({r["rate_per_s"] for r in answers}):
        for tier in sorted({r["tier"] for r in answers}):
            mine = [r for r in answers if r["rate_per_s"] == rate and r["tier"] == tier]
            if not mine:
                continue
            done = [r for r in mine if r["state"] == "completed"]
            lat = np.array([r["latency_s"] for r in done]) if done else np.array([np.nan])
            variants = {}
            for r in done:
                variants[r["variant"]] = variants.get(r["variant"], 0) + 1
            rows.append({"component": "serve_load", "rate_per_s": rate, "tier": tier, "requests": len(mine),
                         "completed": len(done), "rejected": sum(r["state"] == "rejected" for r in mine),
                         "failed": sum(r["state"] == "failed" for r in mine),
                         "unanswered": sum(r["state"] == "unanswered" for r in mine),
                         "retried": sum(r["retried"] for r in mine),
                         **{f"p{q}_s": float(np.percentile(lat, q)) for q in (50, 95, 99)},
                         "target_s": targets.get(tier), "variants": variants})
    count = {s: sum(r["state"] == s for r in answers) for s in ("completed", "rejected", "failed", "invalid", "unanswered")}
    ids = {r["id"] for r in answers}
    mine = [r for r in ledger["requests"] if r["id"] in ids]  # a running server's ledger holds earlier traffic too
    states = {s: sum(r["state"] == s for r in mine) for s in ("accepted", "completed", "failed", "rejected", "received")}
    silent = sum(r["state"] in ("failed", "rejected") and not r["reason"] for r in mine)
    accepted = states["accepted"] + states["completed"] + states["failed"]
    rows.append({"component": "serve_accounting", "sent": len(answers), **{f"client_{k}": v for k, v in count.items()},
                 "ledger_received": len(mine), "ledger_accepted": accepted,
                 **{f"ledger_{k}": states[k] for k in ("completed", "failed", "rejected")},
                 "ledger_in_flight": states["accepted"] + states["received"], "ledger_failed_without_reason": silent,
                 "kills": [r for r in results if r.get("event") in ("killed", "not killed")],
                 "accepted_equals_completed_plus_failed": accepted == states["completed"] + states["failed"],
                 "client_matches_ledger": (count["completed"], count["rejected"], count["failed"])
                 == (states["completed"], states["rejected"], states["failed"]),
                 "unaccounted": count["unanswered"] + len(ids - {r["id"] for r in mine})})
    return rows


def load_test(url: str | None = None, *, rates_per_s: tuple[float, ...] = (0.05, 0.15, 0.4), phase_s: float = 60.0,
              max_requests: int = 60, tier_mix: dict[str, float] = DEFAULT_MIX, seconds: tuple[float, ...] = (10.0, 20.0, 30.0),
              client_timeout_s: float = 900.0, kill_replica: str | None = None, kill_at_s: float = 20.0,
              config=None, seed: int = 0) -> list[dict]:
    """Drive the server at `url` (or start one on a local Ray from `config`, default `ServeConfig()`,
    and stop it afterwards) with the sweep; returns the rows of `summarize`."""
    import httpx

    from ..serve.app import ServeConfig, start_server, stop_server

    started = url is None
    if started:
        url = start_server(config or ServeConfig())
    try:
        plan = arrival_plan(list(rates_per_s), phase_s, max_requests, tier_mix, seconds, seed)
        kill = (kill_at_s, kill_replica) if kill_replica else None
        with ThreadPoolExecutor(1) as pool:  # its own event loop, also when called from a notebook's
            results = pool.submit(asyncio.run, _drive(url, plan, client_timeout_s, kill)).result()
        ledger = httpx.get(f"{url}/ledger", params={"rows": True}, timeout=60).json()
        service = httpx.get(f"{url}/health", timeout=60).json()
    finally:
        if started:
            stop_server()
    rows = summarize(results, ledger, service["targets_s"])
    rows.append({"component": "serve_service_table", **service})
    return rows

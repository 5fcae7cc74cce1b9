"""Requests are validated with a status and a message, decomposed as their prompt asks, and routed to
the best variant that meets their tier's target, or rejected with the reason."""

import json

import pytest

from accelerando.serve import (DEFAULT_TIERS, BadRequest, MusicRequest, Router, ServiceTable, Tier, decompose,
                               parse_request, plan_request)

# synthesis seconds per second of audio: full precision the slowest, fewer steps the fastest
SERVICE = ServiceTable({"full": 2.0, "w4a4": 1.0, "fewer-steps": 0.5}, fixed={"plan": 0.0, "lyrics": 1.0})


def body(**fields) -> str:
    return json.dumps({"prompt": "a folk song in A minor at 96 BPM", "seconds": 30, "tier": "premium"} | fields)


def test_a_good_request_parses():
    req = parse_request(body(id="r1"))
    assert req == MusicRequest("a folk song in A minor at 96 BPM", 30.0, "premium", "r1")


@pytest.mark.parametrize("raw,status,words", [
    ("{not json", 400, "not JSON"),
    ("[1, 2]", 400, "JSON object"),
    (body(tier="gold"), 422, "tier 'gold' is unknown"),
    (body(prompt="   "), 422, "non-empty"),
    (body(seconds=-3), 422, "more than 0"),
    (body(seconds=1e9), 422, "at most"),
    (body(seconds="ten"), 422, "number of seconds"),
    (body(seconds=True), 422, "number of seconds"),
    (body(colour="red"), 422, "unknown field"),
    (body(prompt="x" * 600), 422, "characters"),
    ("x" * 20_000, 413, "limit"),
])
def test_bad_requests_get_a_status_and_a_message(raw, status, words):
    with pytest.raises(BadRequest, match=words) as err:
        parse_request(raw)
    assert err.value.status == status


def test_decomposition_follows_the_prompt():
    song = MusicRequest("a two-minute folk song in A minor at 96 BPM with lyrics about the sea", 125.0, "free")
    plan = plan_request(song, section_seconds=10.0)
    assert plan.bpm == pytest.approx(96.0) and plan.key == (9, "minor") and plan.lyrics
    assert plan.sections == (10.0,) * 12 + (pytest.approx(5.0),)
    kinds = [t.kind for t in decompose(song)]
    assert kinds[:2] == ["plan", "lyrics"] and kinds.count("synthesis") == 13
    instrumental = MusicRequest("a string quartet", 10.0, "free")
    assert [t.kind for t in decompose(instrumental)] == ["plan", "synthesis"]


def test_an_idle_deployment_serves_the_best_variant():
    router = Router(SERVICE, {"full": 2, "w4a4": 1, "fewer-steps": 1})
    decision = router.route(MusicRequest("a waltz", 20.0, "premium"), now=0.0)
    assert decision.accepted and decision.status == 202 and decision.variant == "full"
    assert decision.predicted_finish == pytest.approx(20.0)  # two 10 s sections in parallel on two replicas


def test_under_load_the_free_tier_shifts_down_and_premium_keeps_its_target():
    tiers = {"premium": Tier("premium", 30.0, ("full", "w4a4")),
             "free": Tier("free", 60.0, ("full", "w4a4", "fewer-steps"), reserved=1)}
    router = Router(SERVICE, {"full": 3, "w4a4": 2, "fewer-steps": 2}, tiers)
    free = [router.route(MusicRequest(f"song {i}", 20.0, "free"), now=0.0) for i in range(24)]
    assert [d.variant for d in free[:2]] == ["full", "full"]
    assert "fewer-steps" in [d.variant for d in free if d.accepted]  # cheaper variants as the queue grows
    assert any(not d.accepted for d in free)                          # then admission control says no ...
    rejected = next(d for d in free if not d.accepted)
    assert rejected.status == 503 and "cannot be met" in rejected.reason  # ... with the reason
    premium = router.route(MusicRequest("a fanfare", 10.0, "premium"), now=0.0)
    assert premium.accepted and premium.predicted_finish <= 30.0  # the reserved replicas kept it free


def test_a_tier_with_only_reserved_replicas_is_told_why():
    router = Router(SERVICE, {"full": 1}, DEFAULT_TIERS)
    decision = router.route(MusicRequest("a hymn", 10.0, "free"), now=0.0)
    assert not decision.accepted and decision.status == 503 and "reserved" in decision.reason
    with pytest.raises(ValueError, match="at least one replica"):
        Router(SERVICE, {"full": 0})


def test_simulation_compares_policies_on_the_same_arrivals():
    from accelerando.serve.simulate import fifo_router, poisson_arrivals, priority_router, simulate, summary

    replicas = {"full": 4, "w4a4": 2, "fewer-steps": 2}
    arrivals = poisson_arrivals(rate_per_s=0.5, duration_s=600, seed=1)
    assert arrivals == poisson_arrivals(rate_per_s=0.5, duration_s=600, seed=1)  # seeded
    fifo = summary(simulate(fifo_router(SERVICE, replicas), arrivals))
    aware = summary(simulate(Router(SERVICE, replicas), arrivals))
    priority = summary(simulate(priority_router(SERVICE, replicas), arrivals))
    assert all(s["rejected_share"] == 0 for s in fifo.values())       # FIFO never says no ...
    assert fifo["premium"]["p95_s"] > DEFAULT_TIERS["premium"].latency_target_s  # ... so premium waits past its target
    assert aware["premium"]["p99_s"] <= DEFAULT_TIERS["premium"].latency_target_s
    assert aware["free"]["rejected_share"] < priority["free"]["rejected_share"]  # shifting down serves more
    with pytest.raises(ValueError, match="sum to"):
        poisson_arrivals(1.0, 10, {"premium": 0.5})


def test_saturation_rate_is_where_fifo_queues_start_to_grow():
    from accelerando.serve.simulate import fifo_router, poisson_arrivals, saturation_rate, simulate, summary

    # full costs 2 s per audio second: requests of 10 and 30 s are 20 and 60 s of work, 40 s on average
    assert saturation_rate(SERVICE, 4, seconds=(10.0, 30.0)) == pytest.approx(4 / 40.0)
    p95 = {}
    for load in (0.5, 2.0):
        rate = load * saturation_rate(SERVICE, 4, seconds=(10.0, 30.0))
        rows = simulate(fifo_router(SERVICE, {"full": 4}), poisson_arrivals(rate, 3600, seconds=(10.0, 30.0), seed=0))
        p95[load] = summary(rows)["free"]["p95_s"]
    assert p95[0.5] < 120 < 600 < p95[2.0]  # below it the queue stays short, above it it grows for the hour
    with pytest.raises(ValueError, match="at least one replica"):
        saturation_rate(SERVICE, 0)


def test_a_reservation_keeps_only_replicas_of_variants_the_reserving_tier_runs():
    router = Router(SERVICE, {"full": 1, "fewer-steps": 1}, DEFAULT_TIERS)  # premium never runs fewer-steps
    decision = router.route(MusicRequest("a reel", 10.0, "free"), now=0.0)
    assert decision.accepted and decision.variant == "fewer-steps"
    assert all(a.replica == 0 for a in decision.assignments if a.replica >= 0)

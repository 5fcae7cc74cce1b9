"""The serving application end to end on a local Ray (tiny random-weight models), its ledger and lyrics model."""

import json
import socket

import httpx
import numpy as np
import pytest
import soundfile as sf

from accelerando.models.lyrics_lm import LyricsLM
from accelerando.serve.ledger import Ledger


def test_ledger_counts_every_state_and_flags_a_silent_failure():
    ledger = Ledger()
    for i in range(5):
        ledger.received(f"r{i}", "free", 10.0, "a waltz")
    ledger.invalid("r0", 422, "tier unknown")
    ledger.decided("r1", False, 503, "target cannot be met")
    for i in (2, 3, 4):
        ledger.decided(f"r{i}", True, 202, "full meets the target", "full", 12.0)
    ledger.finished("r2", ok=True, status=200)
    ledger.finished("r3", ok=False, status=503, reason="section 0 failed on full after 2 attempt(s)")
    account = ledger.account()
    assert account == {**account, "received": 5, "invalid": 1, "rejected": 1, "accepted": 3, "completed": 1,
                       "failed": 1, "in_flight": 1, "settled": False}
    ledger.finished("r4", ok=False, status=503, reason="")
    assert ledger.account()["failed_without_reason"] == 1 and not ledger.account()["settled"]
    with pytest.raises(ValueError, match="already received"):
        ledger.received("r1", "free", 10.0, "again")


def test_ledger_shows_the_attempts_running_now():
    ledger = Ledger()
    ledger.received("r", "free", 30.0, "a waltz")
    for section in range(3):
        ledger.attempt_started("r", "synthesis", section, "full", 0)
    ledger.attempt_finished("r", "synthesis", 0, 0)
    ledger.attempt_finished("r", "synthesis", 1, 0, error="RayActorError: the replica died")
    ledger.attempt_started("r", "synthesis", 1, "full", 1)  # the retry
    assert ledger.running() == {"full": 2}
    attempts = ledger.rows("attempts")
    assert [a["error"] for a in attempts if a["finished_at"] is not None] == [None, "RayActorError: the replica died"]


def test_serve_config_scales_every_tier_target():
    from accelerando.serve.app import ServeConfig
    from accelerando.serve.policy import DEFAULT_TIERS

    config = ServeConfig(target_scale=0.1, ledger=":memory:", audio_dir=None)
    assert {n: t.latency_target_s for n, t in config.tiers.items()} == pytest.approx(
        {n: 0.1 * t.latency_target_s for n, t in DEFAULT_TIERS.items()})
    with pytest.raises(ValueError, match="target_scale"):
        ServeConfig(target_scale=0, ledger=":memory:", audio_dir=None)


def test_ledger_survives_a_restart(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.received("a", "premium", 5.0, "a march")
    ledger.close()
    assert Ledger(path).rows()[0]["id"] == "a"


def test_lyrics_model_is_deterministic_and_uses_the_corpus_words():
    texts = ["Nun danket alle Gott mit Herzen Mund und Händen", "Wer nur den lieben Gott lässt walten"]
    lm = LyricsLM.fit(texts)
    a, b = lm.generate(lines=3, words_per_line=4, seed=1), lm.generate(lines=3, words_per_line=4, seed=1)
    assert a == b and len(a.splitlines()) == 3
    assert set(a.split()) <= set(" ".join(texts).split())
    with pytest.raises(ValueError, match="no words"):
        LyricsLM.fit([""])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("ray")
    from accelerando.serve.app import ServeConfig, start_server, stop_server

    root = tmp_path_factory.mktemp("serve")
    config = ServeConfig(model="tiny", replicas={"full": 2, "fewer-steps": 1}, ledger=str(root / "ledger.sqlite"),
                         audio_dir=str(root / "audio"), lyrics_scores=8)
    url = start_server(config, port=_free_port(), num_cpus=2)
    yield url
    stop_server()


@pytest.mark.parametrize("body, status, words", [
    (b'{"prompt": "a waltz", "seconds": 2, "tier": "gold"}', 422, "tier 'gold' is unknown"),
    (b'{"prompt": "a waltz", "seconds": -3, "tier": "free"}', 422, "more than 0"),
    (b'{"prompt": "a waltz", "seconds": 1e9, "tier": "free"}', 422, "at most"),
    (b'{"prompt": "  ", "seconds": 2, "tier": "free"}', 422, "non-empty"),
    (b'{"prompt": "a waltz", "seconds": 2, "tier": "free"', 400, "not JSON"),
    (b'[1, 2]', 400, "JSON object"),
    (json.dumps({"prompt": "a" * 20_000, "seconds": 2, "tier": "free"}).encode(), 413, "limit"),
])
def test_bad_requests_get_a_4xx_with_the_fix(server, body, status, words):
    r = httpx.post(f"{server}/generate", content=body, timeout=60)
    assert r.status_code == status and words in r.json()["error"]


def test_a_request_is_served_with_its_audio_and_recorded(server):
    r = httpx.post(f"{server}/generate", json={"prompt": "a folk song in A minor with lyrics about the sea",
                                              "seconds": 2.5, "tier": "premium", "id": "first"}, timeout=300)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["state"] == "completed" and answer["variant"] in ("full", "fewer-steps")
    assert answer["lyrics"] and answer["plan"]["key"] == [9, "minor"] and len(answer["sections"]) == 2
    wav = httpx.get(f"{server}{answer['audio_url']}", timeout=60)
    audio, sr = sf.read(__import__("io").BytesIO(wav.content))
    assert abs(len(audio) / sr - 2.5) < 0.01 and np.isfinite(audio).all() and np.abs(audio).max() > 0
    again = httpx.post(f"{server}/generate", json={"prompt": "x", "seconds": 1, "tier": "free", "id": "first"}, timeout=60)
    assert again.status_code == 409
    assert httpx.get(f"{server}/audio/nothing", timeout=60).status_code == 404
    rows = {r["id"]: r for r in httpx.get(f"{server}/ledger", params={"rows": True}, timeout=60).json()["requests"]}
    assert rows["first"]["state"] == "completed"


def test_a_short_load_accounts_for_every_request_even_when_a_replica_dies(server):
    from accelerando.bench.serve import load_test

    rows = load_test(server, rates_per_s=(2.0,), phase_s=6.0, max_requests=10, seconds=(1.0, 3.0),
                     client_timeout_s=300.0, kill_replica="full", kill_at_s=1.0)
    account = next(r for r in rows if r["component"] == "serve_accounting")
    assert account["sent"] >= 5 and account["unaccounted"] == 0, account
    assert account["accepted_equals_completed_plus_failed"] and account["client_matches_ledger"], account
    assert account["ledger_failed_without_reason"] == 0 and account["ledger_in_flight"] == 0
    kill = account["kills"][0]
    assert kill["event"] == "killed" and kill["sections_running"] >= 1, kill  # killed while every replica was busy ...
    assert sum(r["retried"] for r in rows if r["component"] == "serve_load") >= 1  # ... so a section was retried
    assert account["client_completed"] >= 1

"""The listening app: stimuli it prepares, its statistics, and its API end to end (in process and as
a real uvicorn server that is killed mid-session and restarted), with the bad input it refuses."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import yaml
from fastapi.testclient import TestClient

from accelerando.audio import AudioError
from accelerando.listening.analysis import abx_summary, binomial_p, mushra_summary, post_screen
from accelerando.listening.app import create_app
from accelerando.listening.experiment import (ANCHORS, HIDDEN_REFERENCE, Experiment, ExperimentError, loudness,
                                              prepare, read_stimulus)
from accelerando.listening.store import Store

SR = 44100
TOKEN = "test-admin-token-0123456789"


def music(seconds: float = 2.0, seed: int = 0, noise: float = 0.0, gain: float = 0.3) -> np.ndarray:
    """[2, samples]: a chord with harmonics up to 12 kHz (so the anchors remove something), plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f * k * t) / k for f in (220.0, 277.2, 329.6) for k in range(1, 30) if f * k < 12000)
    x = x / np.abs(x).max() + noise * rng.standard_normal(len(t))
    x = gain * x / np.abs(x).max()
    return np.stack([x, 0.9 * x]).astype(np.float32)


@pytest.fixture
def experiment_file(tmp_path) -> Path:
    audio = tmp_path / "audio"
    audio.mkdir()
    for name, wav in {"ref": music(), "good": music(noise=0.02), "bad": music(noise=0.3, gain=0.1)}.items():
        sf.write(audio / f"{name}.wav", wav.T, SR)
    spec = {"name": "test", "title": "A test", "training": "train",
            "trials": [{"id": "train", "reference": "audio/ref.wav", "conditions": {"good": "audio/good.wav"}},
                       {"id": "t1", "reference": "audio/ref.wav", "conditions": {"good": "audio/good.wav", "bad": "audio/bad.wav"}},
                       {"id": "t2", "reference": "audio/ref.wav", "conditions": {"bad": "audio/bad.wav"}},
                       {"id": "x1", "type": "abx", "a": "audio/ref.wav", "b": "audio/bad.wav"}]}
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_prepared_stimuli_hide_their_condition_and_match_loudness(experiment_file, tmp_path):
    exp = Experiment.load(experiment_file)
    manifest = prepare(exp, tmp_path / "stimuli")
    t1 = manifest["t1"]
    assert set(t1) == {"reference", HIDDEN_REFERENCE, *ANCHORS, "good", "bad"}
    files = sorted(p.name for p in (tmp_path / "stimuli").glob("*.wav"))
    assert all(__import__("re").fullmatch(r"[0-9a-f]{16}\.wav", f) for f in files), files  # opaque names
    level = {c: loudness(sf.read(tmp_path / "stimuli" / f"{sid}.wav", always_2d=True)[0].T, SR) for c, sid in t1.items()}
    assert max(level.values()) - min(level.values()) < 0.1  # loudness-matched (LU)
    anchor, _ = sf.read(tmp_path / "stimuli" / f"{t1['anchor_3.5k']}.wav", always_2d=True)
    ref, _ = sf.read(tmp_path / "stimuli" / f"{t1['reference']}.wav", always_2d=True)
    spectrum = lambda x: np.abs(np.fft.rfft(x[:, 0] * np.hanning(len(x)))) ** 2  # noqa: E731  (power)
    high = np.fft.rfftfreq(len(ref), 1 / SR) > 5000
    assert spectrum(anchor)[high].sum() < 1e-3 * spectrum(ref)[high].sum()  # next to nothing above the anchor's band


def test_experiment_and_stimulus_errors_name_the_fix(tmp_path):
    base = {"name": "e", "trials": [{"id": "a", "reference": "r.wav", "conditions": {"x": "x.wav"}}]}
    with pytest.raises(ExperimentError, match="unknown key"):
        Experiment.from_dict({**base, "trails": []})
    with pytest.raises(ExperimentError, match="exceed"):
        Experiment.from_dict({"name": "e", "trials": [{"id": "a", "reference": "r", "conditions": {f"c{i}": "x" for i in range(10)}}]})
    with pytest.raises(ExperimentError, match="reserved"):
        Experiment.from_dict({"name": "e", "trials": [{"id": "a", "reference": "r", "conditions": {HIDDEN_REFERENCE: "x"}}]})
    with pytest.raises(ExperimentError, match="letters"):
        Experiment.from_dict({"name": "e", "trials": [{"id": "../etc", "reference": "r", "conditions": {"x": "x"}}]})
    with pytest.raises(ExperimentError, match="training trial"):
        Experiment.from_dict({**base, "training": "nope"})
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match="not readable audio"):
        read_stimulus(tmp_path / "text.wav", "x")
    sf.write(tmp_path / "silent.wav", np.zeros((SR * 2, 2), np.float32), SR)
    with pytest.raises(AudioError, match="silent"):
        read_stimulus(tmp_path / "silent.wav", "x")
    sf.write(tmp_path / "short.wav", music(0.3).T, SR)
    with pytest.raises(AudioError, match="shorter"):
        read_stimulus(tmp_path / "short.wav", "x")


def test_statistics_screen_assessors_and_test_abx_against_chance():
    rows = []
    for pid, hidden in (("good", [100, 95, 98, 92]), ("careless", [100, 60, 40, 95])):
        for t, h in enumerate(hidden):
            rows += [{"participant_id": pid, "trial_id": f"t{t}", "condition": HIDDEN_REFERENCE, "score": h},
                     {"participant_id": pid, "trial_id": f"t{t}", "condition": "w4a4", "score": 60 + t}]
    kept, excluded = post_screen(rows)
    assert excluded == {"careless": 0.5} and {r["participant_id"] for r in kept} == {"good"}
    w4a4 = next(r for r in mushra_summary(kept) if r["condition"] == "w4a4")
    assert w4a4["n"] == 4 and w4a4["median"] == 61.5 and w4a4["ci_low"] < 61.5 < w4a4["ci_high"]
    assert binomial_p(10, 10) == pytest.approx(0.5 ** 10) and binomial_p(5, 10) > 0.5
    summary = abx_summary([{"trial_id": "x", "correct": i < 9} for i in range(10)])
    assert summary[-1]["trial_id"] == "all trials" and summary[-1]["correct"] == 9 and summary[-1]["p_value"] < 0.05


def _client(experiment_file, tmp_path, db=None) -> TestClient:
    store = Store(db or f"sqlite:///{tmp_path / 'answers.sqlite'}")
    return TestClient(create_app(Experiment.load(experiment_file), store, tmp_path / "stimuli", TOKEN))


def _rate_all(client, pid, trial, score=70):
    for slot in trial["slots"]:
        if slot != "reference":
            r = client.put(f"/api/participants/{pid}/trials/{trial['id']}/ratings/{slot}", json={"score": score})
            assert r.status_code == 200, r.text


def test_a_participant_rates_resumes_after_a_restart_and_the_admin_sees_it(experiment_file, tmp_path):
    client = _client(experiment_file, tmp_path)
    assert client.post("/api/participants", json={}).status_code == 400  # no consent, no participant
    pid = client.post("/api/participants", json={"consent": True}).json()["participant_id"]
    state = client.get(f"/api/participants/{pid}").json()
    assert [t["id"] for t in state["trials"]][0] == "train" and state["position"] == 0
    assert sorted(t["id"] for t in state["trials"][1:]) == ["t1", "t2", "x1"]
    trials = {t["id"]: t for t in state["trials"]}
    assert trials["t1"]["slots"][0] == "reference" and len(trials["t1"]["slots"]) == 1 + 1 + 2 + 2
    audio = client.get(f"/api/participants/{pid}/trials/t1/audio/1")
    assert audio.status_code == 200 and sf.info(__import__("io").BytesIO(audio.content)).samplerate == SR
    assert client.post(f"/api/participants/{pid}/trials/train/done").status_code == 200  # training: listened, not rated
    assert client.put(f"/api/participants/{pid}/trials/train/ratings/1", json={"score": 5}).status_code == 409
    # bad ratings: each a clear 4xx, nothing stored
    for body, status in (({"score": 101}, 422), ({"score": -1}, 422), ({"score": True}, 422), ({"score": "70"}, 422),
                         ({}, 422), ([1], 422)):
        assert client.put(f"/api/participants/{pid}/trials/t1/ratings/1", json=body).status_code == status, body
    assert client.put(f"/api/participants/{pid}/trials/t1/ratings/99", json={"score": 5}).status_code == 404
    assert client.put(f"/api/participants/{'0' * 32}/trials/t1/ratings/1", json={"score": 5}).status_code == 404
    assert client.put(f"/api/participants/{pid}/trials/t1/ratings/1", content=b"{not json").status_code == 400
    assert client.put(f"/api/participants/{pid}/trials/t1/ratings/1", content=b"x" * 20_000).status_code == 413
    assert client.post(f"/api/participants/{pid}/trials/t1/done").status_code == 409  # nothing rated yet
    client.put(f"/api/participants/{pid}/trials/t1/ratings/1", json={"score": 20})
    assert client.put(f"/api/participants/{pid}/trials/t1/ratings/1", json={"score": 30}).json()["revisions"] == 2
    # the server restarts (a new app on the same database): the participant resumes with every rating
    client = _client(experiment_file, tmp_path)
    state = client.get(f"/api/participants/{pid}").json()
    t1 = next(t for t in state["trials"] if t["id"] == "t1")
    assert t1["ratings"] == {"1": 30} and state["trials"][state["position"]]["id"] != "train"
    _rate_all(client, pid, t1)
    assert client.post(f"/api/participants/{pid}/trials/t1/done").status_code == 200
    assert client.post(f"/api/participants/{pid}/trials/x1/abx", json={"answer": "C"}).status_code == 422
    assert client.post(f"/api/participants/{pid}/trials/x1/abx", json={"answer": "A"}).status_code == 200
    assert client.post(f"/api/participants/{pid}/trials/x1/abx", json={"answer": "B"}).status_code == 409  # one answer
    evil = "<script>alert(1)</script>'; DROP TABLE ratings; --"
    assert client.post(f"/api/participants/{pid}/comments", json={"trial_id": "t1", "text": evil}).status_code == 201
    assert client.post(f"/api/participants/{pid}/comments", json={"text": "x" * 3000}).status_code == 422
    # admin: 401 without or with a wrong token; the export holds exactly what was given
    assert client.get("/admin/export.json").status_code == 401
    assert client.get("/admin/export.csv", headers={"Authorization": "Bearer wrong"}).status_code == 401
    export = client.get("/admin/export.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert len(export["ratings"]) == 5 and len(export["abx_answers"]) == 1  # t1's five rated slots, one ABX
    assert export["comments"][0]["text"] == evil
    csv_text = client.get("/admin/export.csv", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert csv_text.startswith("kind,participant_id") and csv_text.count("\nmushra,") == 5
    summary = client.get("/admin/summary.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    # every slot, the hidden reference too, got 70 or less: post-screening excludes this assessor
    assert list(summary["excluded_assessors"]) == [pid] and summary["mushra"] == []


def test_each_participant_gets_an_order_of_their_own(experiment_file, tmp_path):
    client = _client(experiment_file, tmp_path)
    orders = set()
    for _ in range(8):
        pid = client.post("/api/participants", json={"consent": True}).json()["participant_id"]
        first = client.get(f"/api/participants/{pid}").json()
        assert first == client.get(f"/api/participants/{pid}").json()  # stable for one participant
        # which condition sits in slot 1 of t1: read back through the export after rating it
        client.put(f"/api/participants/{pid}/trials/t1/ratings/1", json={"score": 50})
        orders.add(tuple(t["id"] for t in first["trials"]))
    export = client.get("/admin/export.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert len({r["condition"] for r in export["ratings"]}) > 1 and len(orders) > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(experiment_file, tmp_path, port) -> subprocess.Popen:
    env = {**os.environ, "ACCELERANDO_LISTENING_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "accelerando.listening", "serve", "--experiment", str(experiment_file),
                             "--db", f"sqlite:///{tmp_path / 'live.sqlite'}", "--stimuli-dir", str(tmp_path / "live"),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/experiment", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(proc.stdout.read().decode()[-3000:])


def test_fifty_raters_at_once_and_a_killed_server_lose_no_rating(experiment_file, tmp_path):
    """50 concurrent raters on loopback; the server is killed (SIGKILL) mid-load and restarted;
    every rating the server acknowledged is in the database exactly once."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(experiment_file, tmp_path, port)
    acknowledged, latencies = set(), []

    async def rater(client, pid, slots):
        for slot in slots:
            for _ in range(240):  # retry through the restart, as the page's save queue does
                start = time.perf_counter()
                try:
                    r = await client.put(f"/api/participants/{pid}/trials/t1/ratings/{slot}", json={"score": 42})
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
                    continue
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                    acknowledged.add((pid, slot))
                    break
                await asyncio.sleep(0.5)

    async def run_with_kill():
        nonlocal server
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            pids = [(await client.post("/api/participants", json={"consent": True})).json()["participant_id"]
                    for _ in range(50)]
            state = (await client.get(f"/api/participants/{pids[0]}")).json()
            slots = [s for s in next(t for t in state["trials"] if t["id"] == "t1")["slots"] if s != "reference"]
            raters = asyncio.gather(*[rater(client, p, slots) for p in pids])
            await asyncio.sleep(0.3)
            server.send_signal(signal.SIGKILL)
            server.wait()
            server = await asyncio.to_thread(_serve, experiment_file, tmp_path, port)
            await asyncio.wait_for(raters, timeout=300)
        return pids, slots

    try:
        pids, slots = asyncio.run(run_with_kill())
        export = httpx.get(f"{url}/admin/export.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    finally:
        server.kill()
    stored = [(r["participant_id"], r["trial_id"], r["condition"]) for r in export["ratings"]]
    assert len(stored) == len(set(stored))  # none duplicated
    assert len(acknowledged) == len(pids) * len(slots) == len(stored)  # none lost
    print(f"\n50 raters: {len(stored)} ratings, p95 save latency {np.percentile(latencies, 95) * 1000:.0f} ms")


def test_a_participant_completes_the_test_in_a_real_browser(experiment_file, tmp_path):
    """Headless Chromium (Debian's, driven by Playwright) through consent, training, both MUSHRA
    trials and the ABX trial; Next stays disabled until every stimulus is rated; switching
    stimuli keeps the playback position."""
    import shutil

    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no chromium on PATH: `make setup` installs Debian's (apt-get install chromium)"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(experiment_file, tmp_path, port)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.check("#agree")
            page.click("#start")
            page.wait_for_selector("#trial[data-ready='train']")
            page.click("#stimuli button.play >> nth=1")
            page.wait_for_timeout(300)
            before = page.evaluate("player.position()")
            page.click("#stimuli button.play >> nth=0")  # switch: same position, not from the start
            after = page.evaluate("player.position()")
            assert 0.1 < before <= after < before + 0.5, (before, after)  # playing, and on from where it was
            shown = "train"
            page.click("#next")
            for _ in range(3):
                # the next trial is on screen once its audio is decoded (data-ready names it)
                page.wait_for_function(f"(document.getElementById('trial').dataset.ready || {shown!r}) !== {shown!r}")
                shown = page.evaluate("document.getElementById('trial').dataset.ready")
                if page.is_visible("#abx"):
                    page.click("#abx button[data-answer=A]")
                else:
                    sliders = page.locator("#stimuli input[type=range]")
                    for i in range(sliders.count()):
                        assert page.is_disabled("#next")  # not every stimulus rated yet
                        sliders.nth(i).fill(str(95 - 10 * i))
                page.wait_for_selector("#save-status:has-text('All answers saved')")
                page.wait_for_function("!document.getElementById('next').disabled")
                page.click("#next")
            page.wait_for_selector("#finished:visible")
            assert not errors, errors
            browser.close()
        export = httpx.get(f"{url}/admin/export.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    finally:
        server.kill()
    assert len(export["ratings"]) == 5 + 4 and len(export["abx_answers"]) == 1  # t1, t2 and x1, all saved
    assert export["participants"][0]["finished_at"] is not None

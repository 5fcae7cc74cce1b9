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
from accelerando.listening.analysis import binomial_p, choice_summary, mushra_summary, post_screen
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
    stems = {"drums": music(seed=1, noise=1.0, gain=0.2), "bass": music(seed=2, gain=0.2), "keys": music(seed=3, gain=0.1)}
    for name, wav in {"ref": music(), "good": music(noise=0.02), "bad": music(noise=0.3, gain=0.1), **stems,
                      "mix": sum(stems.values())}.items():
        sf.write(audio / f"{name}.wav", wav.T, SR)
    spec = {"name": "test", "title": "A test", "training": "train",
            "trials": [{"id": "train", "reference": "audio/ref.wav", "conditions": {"good": "audio/good.wav"}},
                       {"id": "t1", "reference": "audio/ref.wav", "conditions": {"good": "audio/good.wav", "bad": "audio/bad.wav"}},
                       {"id": "t2", "reference": "audio/ref.wav", "conditions": {"bad": "audio/bad.wav"}},
                       {"id": "x1", "type": "abx", "a": "audio/ref.wav", "b": "audio/bad.wav"},
                       {"id": "r1", "type": "remix", "mix": "audio/mix.wav", "generated": "bass",
                        "stems": {s: f"audio/{s}.wav" for s in ("drums", "bass", "keys")}}]}
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
    with pytest.raises(ExperimentError, match="remix trial needs"):
        Experiment.from_dict({"name": "e", "trials": [{"id": "r", "type": "remix", "mix": "m", "generated": "x",
                                                        "stems": {"a": "a", "b": "b"}}]})
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
    assert binomial_p(4, 10, chance=1 / 3) > 0.05  # four of ten is what guessing among three gives
    answers = [{"kind": "abx", "trial_id": "x", "correct": i < 9, "options": 2} for i in range(10)]
    answers += [{"kind": "remix", "trial_id": "r", "correct": i < 4, "options": 3} for i in range(10)]
    summary = {(r["kind"], r["trial_id"]): r for r in choice_summary(answers)}
    assert summary[("abx", "all abx trials")]["correct"] == 9 and summary[("abx", "x")]["p_value"] < 0.05
    assert summary[("remix", "r")]["chance"] == pytest.approx(1 / 3) and summary[("remix", "r")]["p_value"] > 0.05


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
    assert sorted(t["id"] for t in state["trials"][1:]) == ["r1", "t1", "t2", "x1"]
    remix = next(t for t in state["trials"] if t["id"] == "r1")
    assert remix["slots"][0] == "mix" and sorted(remix["slots"][1:]) == ["bass", "drums", "keys"]
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
    assert client.post(f"/api/participants/{pid}/trials/x1/choice", json={"answer": "C"}).status_code == 422
    assert client.post(f"/api/participants/{pid}/trials/x1/choice", json={"answer": "A"}).status_code == 200
    assert client.post(f"/api/participants/{pid}/trials/x1/choice", json={"answer": "B"}).status_code == 409  # one answer
    assert client.post(f"/api/participants/{pid}/trials/t2/choice", json={"answer": "A"}).status_code == 409
    assert client.post(f"/api/participants/{pid}/trials/r1/choice", json={"answer": "mix"}).status_code == 422
    assert client.post(f"/api/participants/{pid}/trials/r1/choice", json={"answer": "bass"}).status_code == 200
    evil = "<script>alert(1)</script>'; DROP TABLE ratings; --"
    assert client.post(f"/api/participants/{pid}/comments", json={"trial_id": "t1", "text": evil}).status_code == 201
    assert client.post(f"/api/participants/{pid}/comments", json={"text": "x" * 3000}).status_code == 422
    # admin: 401 without or with a wrong token; the export holds exactly what was given
    assert client.get("/admin/export.json").status_code == 401
    assert client.get("/admin/export.csv", headers={"Authorization": "Bearer wrong"}).status_code == 401
    export = client.get("/admin/export.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert len(export["ratings"]) == 5  # t1's five rated slots
    assert {(c["trial_id"], c["answer"], c["correct"]) for c in export["choices"]} >= {("r1", "bass", True)}
    assert len(export["choices"]) == 2
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
    (tmp_path / "records").mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "accelerando.listening", "serve", "--experiment", str(experiment_file),
                             "--db", f"sqlite:///{tmp_path / 'live.sqlite'}", "--stimuli-dir", str(tmp_path / "live"),
                             "--records", str(tmp_path / "records"), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
            for _ in range(4):
                # the next trial is on screen once its audio is decoded (data-ready names it)
                page.wait_for_function(f"(document.getElementById('trial').dataset.ready || {shown!r}) !== {shown!r}")
                shown = page.evaluate("document.getElementById('trial').dataset.ready")
                if page.is_visible("#choice"):  # ABX or remix: one answer
                    page.click("#choice button >> nth=0")
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
    assert len(export["ratings"]) == 5 + 4 and len(export["choices"]) == 2  # t1, t2, x1 and r1, all saved
    assert export["participants"][0]["finished_at"] is not None


def test_uploads_are_validated_and_stored_whole_under_safe_names(experiment_file, tmp_path):
    import io

    client = _client(experiment_file, tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def wav_bytes(wav, sr=SR, fmt="WAV"):
        buf = io.BytesIO()
        sf.write(buf, wav.T, sr, format=fmt)
        return buf.getvalue()

    good = wav_bytes(music())
    assert client.put("/admin/stimuli/new.wav", content=good).status_code == 401
    for name in ("..evil.wav", "evil.exe", "a b.wav", ".hidden.wav", "x" * 70 + ".wav"):
        assert client.put(f"/admin/stimuli/{name}", content=good, headers=auth).status_code == 422, name
    assert client.put("/admin/stimuli/..%2Fescape.wav", content=good, headers=auth).status_code in (404, 422)
    refused = {"text.wav": b"RIFF but not really a wave file", "low.wav": wav_bytes(music(), sr=16000),
               "clipped.wav": wav_bytes(np.clip(music(gain=3.0), -1, 1)), "short.flac": wav_bytes(music(0.5), fmt="FLAC")}
    for name, body in refused.items():
        r = client.put(f"/admin/stimuli/{name}", content=body, headers=auth)
        assert r.status_code == 422 and name in r.json()["error"], (name, r.text)
    assert client.put("/admin/stimuli/big.wav", content=b"0" * (51 * 2**20), headers=auth).status_code == 413
    r = client.put("/admin/stimuli/new-take.flac", content=wav_bytes(music(), fmt="FLAC"), headers=auth)
    assert r.status_code == 201 and r.json()["sample_rate"] == SR and r.json()["channels"] == 2
    stored = sorted(p.name for p in (tmp_path / "stimuli" / "uploads").iterdir())
    assert stored == ["new-take.flac"]  # nothing refused was kept, not even in part


def test_dashboard_shows_the_records_offline_and_updates_live(experiment_file, tmp_path):
    """Headless Chromium with every request off loopback refused: the dashboard renders the run
    records (cards, Vega-Lite charts, the log) and shows a record written while it is open."""
    import json
    import shutil

    from accelerando.record import BOOK_RECORD_DIR

    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no chromium on PATH: `make setup` installs Debian's (apt-get install chromium)"
    records = tmp_path / "records"
    records.mkdir()
    for chapter in ("01_baselines", "04_svdquant_audio"):
        shutil.copy(BOOK_RECORD_DIR / f"{chapter}.json", records)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(experiment_file, tmp_path, port)
    outside = []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def offline(route):
                if route.request.url.startswith(url) or route.request.url.startswith(url.replace("http", "ws")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(f"{url}/dashboard")
            page.wait_for_selector("body[data-rendered='2']")
            assert "none measured" not in page.inner_text("#card-latency")  # 01_baselines timed its components
            assert page.locator("#chart-latency svg").count() == 1 and page.locator("#chart-heatmap svg").count() == 1
            assert page.locator("#log tr").count() == 1 + 2
            page.select_option("#chapter", "04_svdquant_audio")
            page.wait_for_selector("body[data-rendered='1']")
            new = json.loads((records / "01_baselines.json").read_text()) | {"chapter": "99_new", "started": "2030-01-01"}
            (records / "99_new.json").write_text(json.dumps(new))  # a run finishes while the page is open
            page.wait_for_selector("#notice:has-text('99_new')", timeout=15_000)
            page.select_option("#chapter", "")
            page.wait_for_selector("body[data-rendered='3']")
            page.click("#log tr[data-name$='99_new']")
            page.wait_for_selector("#record:has-text('99_new')")
            assert not errors, errors
            browser.close()
    finally:
        server.kill()
    assert not outside, outside  # nothing was fetched from outside: the vendored Vega works offline


def test_make_experiment_builds_trials_from_a_chapters_stored_audio(tmp_path):
    from accelerando.listening.__main__ import BOOK_AUDIO, experiment_from_chapter, main

    out = tmp_path / "svdquant.yml"
    main(["make-experiment", "--from", "04_svdquant_audio", "--reference", "full_precision", "--abx", "svdquant_w4a4",
          "--out", str(out)])
    exp = Experiment.load(out)
    mushra = [t for t in exp.trials if t.type == "mushra"]
    assert mushra and all(set(t.sources) == {"reference", "rtn_w4a4", "svdquant_w4a4"} for t in mushra)
    assert [t.type for t in exp.trials].count("abx") == len(mushra) and exp.training == exp.trials[0].id
    assert prepare(exp, tmp_path / "stimuli")  # the chapter's compressed audio is usable as stimuli
    with pytest.raises(SystemExit, match="no clip has reference"):
        experiment_from_chapter("04_svdquant_audio", "nope", [])
    with pytest.raises(SystemExit, match="no stored audio"):
        experiment_from_chapter("99_missing", "x", [], audio_root=BOOK_AUDIO)


def test_dashboard_rows_share_one_unit_and_name_their_cpu(tmp_path):
    import json
    import shutil

    from accelerando import dashboard
    from accelerando.record import BOOK_RECORD_DIR

    for chapter in ("01_baselines", "04_svdquant_audio"):
        shutil.copy(BOOK_RECORD_DIR / f"{chapter}.json", tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"not": "a record"}))
    records = dashboard.find_records([tmp_path])
    assert sorted(r["chapter"] for r in records) == ["01_baselines", "04_svdquant_audio"]  # the rest skipped
    latency = dashboard.efficiency_rows(records)
    assert latency and all(r["cpu"] and r["latency_per_10s"] == pytest.approx(10 * r["latency_s"] / r["audio_seconds"])
                           for r in latency)
    quality = dashboard.quality_rows(records)
    w4a4 = {r["method"] for r in quality if r["bits"] == "w4a4"}
    assert {"rtn", "svdquant"} <= w4a4 and all(r["n"] > 0 and r["value"] >= 0 for r in quality)
    log = [dashboard.summary(r) for r in records]
    assert all(row["cpu"] and row["measurements"] > 0 for row in log)


def test_simulated_panel_is_caught_by_post_screening_and_sizes_a_panel():
    from accelerando.listening.panel import assessors_needed, paired_power, simulate_choices, simulate_mushra

    scores = {HIDDEN_REFERENCE: 98, "svdquant": 80, "rtn": 60, "anchor_3.5k": 20}
    rows = simulate_mushra(scores, trials=6, assessors=20, careless=0.2, seed=0)
    assert all(r["simulated"] for r in rows) and len(rows) == 6 * 20 * len(scores)
    kept, excluded = post_screen(rows)
    careless = {r["participant_id"] for r in rows if r["careless"]}
    assert len(careless) == 4 and careless <= set(excluded)  # random raters miss the hidden reference
    means = {r["condition"]: r["mean"] for r in mushra_summary(kept)}
    assert means["svdquant"] > means["rtn"] > means["anchor_3.5k"]
    abx = choice_summary(simulate_choices("abx", 6, 20, p_correct=0.5, seed=1))
    assert abx[-1]["p_value"] > 0.01  # guessing is not found significant ...
    assert choice_summary(simulate_choices("abx", 6, 20, p_correct=0.9, seed=1))[-1]["p_value"] < 1e-6  # ... hearing is
    assert paired_power(10, 5, 12) < paired_power(40, 5, 12) < paired_power(40, 10, 12)
    n = assessors_needed(5, 12)
    assert paired_power(n, 5, 12) >= 0.8 > paired_power(n - 1, 5, 12)
    with pytest.raises(ValueError, match="careless"):
        simulate_mushra(scores, 1, 1, careless=1.0)

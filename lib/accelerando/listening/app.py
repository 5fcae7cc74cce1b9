"""The listening-test web app: FastAPI on a SQLAlchemy store, one page for participants, one for the admin.

    app = create_app(Experiment.load("exp.yml"), store=Store("sqlite:///listening.sqlite"),
                     stimuli_dir="listening/stimuli", admin_token="...")
    uvicorn.run(app, host="127.0.0.1", port=8010)      # python -m accelerando.listening serve does this

A participant consents, gets an anonymous id, and is served the trials in an order of their own
(the training trial first); inside a MUSHRA trial the stimuli sit in slots 1..n in an order of
their own too. Every answer names a slot, never a condition, and audio is fetched by slot, so the
page holds nothing that tells a condition apart. Each rating is stored when given
(`PUT .../ratings/<slot>`), a trial is closed only when all its slots are rated (409 otherwise),
an ABX or remix trial takes one answer (`POST .../choice`), and the participant's state
(`GET /api/participants/<id>`) lets a reopened tab resume. The admin
routes (`/admin/export.csv`, `/admin/export.json`, `/admin/summary.json`, `PUT /admin/stimuli/<name>`)
answer 401 without the token. `/dashboard` shows every run record (`accelerando.dashboard`) and
updates over a WebSocket (`/ws/records`) when one is written.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import re
import secrets
from pathlib import Path

from fastapi import FastAPI, Header, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from .. import dashboard
from ..audio import CLIP_LEVEL, AudioError
from .analysis import choice_summary, mushra_summary, post_screen
from .experiment import Experiment, prepare, read_stimulus
from .store import Store

STATIC = Path(__file__).parent / "static"
VENDOR = dashboard.REPO_ROOT / "book" / "vendor"   # JavaScript vendored from npm (make vendor)
MAX_BODY_BYTES = 16_384
MAX_UPLOAD_BYTES = 50 * 2**20      # a 30 s stereo stimulus at 96 kHz in float32 is 23 MB
MIN_UPLOAD_RATE = 32_000           # BS.1534-3 tests high-quality audio; the 7 kHz anchor needs more than 14 kHz
MAX_CLIPPED_SHARE = 1e-3           # uploads with more samples at full scale than this are refused
UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(wav|flac)$")
MAX_COMMENT_CHARS = 2000
PARTICIPANT_ID = re.compile(r"^[0-9a-f]{32}$")


class _Bad(Exception):
    """Answered as `status` with `message` (what was wrong and what to send instead)."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Session:
    """One participant's view of the experiment: trial order, slots and the hidden ABX answer,
    all drawn from the participant id, so the same participant always sees the same test."""

    def __init__(self, experiment: Experiment, manifest: dict, pid: str):
        self.experiment, self.manifest, self.pid = experiment, manifest, pid
        rated = [t.id for t in experiment.rated_trials()]
        random.Random(f"{pid}:order").shuffle(rated)
        self.order = ([experiment.training] if experiment.training else []) + rated

    def slots(self, trial_id: str) -> dict[str, str]:
        """Slot label -> condition. MUSHRA: "reference" (the open one) and "1".."n"; ABX: A, B, X;
        remix: "mix" and the stems by name, in an order of the participant's own."""
        trial = self.experiment.trial(trial_id)
        rng = random.Random(f"{self.pid}:{trial_id}")
        if trial.type == "abx":
            return {"A": "a", "B": "b", "X": rng.choice(["a", "b"])}
        if trial.type == "remix":
            stems = [c for c in trial.sources if c != "mix"]
            rng.shuffle(stems)
            return {"mix": "mix", **{stem: stem for stem in stems}}
        rated = [c for c in self.manifest[trial_id] if c != "reference"]
        rng.shuffle(rated)
        return {"reference": "reference", **{str(i + 1): c for i, c in enumerate(rated)}}

    def rated_slots(self, trial_id: str) -> list[str]:
        return [s for s in self.slots(trial_id) if s != "reference"]


def create_app(experiment: Experiment | None, store: Store, stimuli_dir: str | Path, admin_token: str,
               record_dirs: list[Path] | None = None) -> FastAPI:
    """The app for `experiment` (None: the page says how to make one), its answers in `store`, its
    prepared stimuli in `stimuli_dir`, its admin routes behind `admin_token`; the dashboard reads
    the run records in `record_dirs` (default: book/records and runs/)."""
    if len(admin_token) < 16:
        raise ValueError("admin_token: use at least 16 random characters (secrets.token_urlsafe())")
    stimuli_dir = Path(stimuli_dir)
    manifest = prepare(experiment, stimuli_dir) if experiment else {}
    app = FastAPI(title="accelerando listening test", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def cap_body(request: Request, call_next):
        cap = MAX_UPLOAD_BYTES if request.url.path.startswith("/admin/stimuli/") else MAX_BODY_BYTES
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return _error(413, f"request body over {cap} bytes")
        return await call_next(request)

    async def json_body(request: Request) -> dict:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise _Bad(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Bad(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise _Bad(422, "the body must be a JSON object")
        return data

    def session(pid: str) -> Session:
        if experiment is None:
            raise _Bad(404, "no experiment is loaded")
        if not PARTICIPANT_ID.match(pid) or store.participant(pid) is None:
            raise _Bad(404, "unknown participant id: start again from the consent page")
        return Session(experiment, manifest, pid)

    def trial_of(s: Session, trial_id: str):
        if trial_id not in s.order:
            raise _Bad(404, f"unknown trial {trial_id!r}")
        return s.experiment.trial(trial_id)

    def admin(token: str | None) -> None:
        given = (token or "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), admin_token.encode()):
            raise _Bad(401, "admin token missing or wrong: send 'Authorization: Bearer <token>'")

    @app.exception_handler(_Bad)
    async def bad(request: Request, err: _Bad):
        return _error(err.status, err.message)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/admin", response_class=HTMLResponse)
    async def admin_page():
        return FileResponse(STATIC / "admin.html")

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard_page():
        return FileResponse(STATIC / "dashboard.html")

    @app.get("/vendor/{package}/{name}")
    async def vendor(package: str, name: str):
        path = VENDOR / package / name
        if not re.fullmatch(r"[a-z-]+", package) or not re.fullmatch(r"[a-z0-9_.-]+\.js", name) or not path.is_file():
            return _error(404, f"no vendored file {package}/{name}: run `make vendor`")
        return FileResponse(path, media_type="text/javascript")

    def records() -> list[dict]:
        return dashboard.find_records(record_dirs)

    @app.get("/api/records")
    async def record_log():
        return [dashboard.summary(r) for r in records()]

    @app.get("/api/records/{name:path}")
    async def record(name: str):
        found = next((r for r in records() if r["_name"] == name), None)  # only names the log lists: no paths
        if found is None:
            raise _Bad(404, f"no record {name!r}: GET /api/records lists them")
        return {k: v for k, v in found.items() if k != "_path"}

    @app.get("/api/efficiency")
    async def efficiency():
        found = records()
        return {"latency": dashboard.efficiency_rows(found), "quality": dashboard.quality_rows(found)}

    @app.websocket("/ws/records")
    async def watch(socket: WebSocket):
        """Sends {"event": "record", "name": ...} whenever a record is written or changed. Files
        are only stat-ed each second; one whose time changed is read, and announced once it
        parses as a record (a half-written file is looked at again the next second)."""
        await socket.accept()

        def stamps() -> dict[Path, float]:
            out = {}
            for path in dashboard.record_paths(record_dirs):
                try:
                    out[path] = path.stat().st_mtime
                except OSError:  # removed since it was listed
                    pass
            return out

        seen = await asyncio.to_thread(stamps)
        try:
            while True:
                await asyncio.sleep(1.0)
                for path, stamp in sorted((await asyncio.to_thread(stamps)).items()):
                    if seen.get(path) == stamp:
                        continue
                    record = await asyncio.to_thread(dashboard.read_record, path)
                    if record is not None:
                        await socket.send_json({"event": "record", "name": record["_name"]})
                        seen[path] = stamp
        except (WebSocketDisconnect, RuntimeError):
            return

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if not re.fullmatch(r"[a-z0-9_.-]+\.(js|css)", name) or not path.is_file():
            return _error(404, f"no static file {name!r}")
        return FileResponse(path)

    @app.get("/api/experiment")
    async def about():
        if experiment is None:
            return {"loaded": False, "how": "python -m accelerando.listening serve --experiment exp.yml "
                                            "(an experiment file lists trials of a reference and its conditions; "
                                            "python -m accelerando.listening make-experiment builds one)"}
        return {"loaded": True, "name": experiment.name, "title": experiment.title,
                "trials": len(experiment.trials), "training": experiment.training is not None}

    @app.post("/api/participants", status_code=201)
    async def consent(request: Request):
        data = await json_body(request)
        if experiment is None:
            raise _Bad(404, "no experiment is loaded")
        if data.get("consent") is not True:
            raise _Bad(400, "consent is required: send {\"consent\": true} after reading the consent page")
        return {"participant_id": store.new_participant(experiment.name)}

    @app.get("/api/participants/{pid}")
    async def state(pid: str):
        s = session(pid)
        progress = store.progress(pid)
        trials = []
        for tid in s.order:
            trial, slots = experiment.trial(tid), s.slots(tid)
            by_condition = progress["ratings"].get(tid, {})
            trials.append({"id": tid, "type": trial.type, "training": tid == experiment.training,
                           "slots": list(slots), "done": tid in progress["done"],
                           "ratings": {sl: by_condition[c] for sl, c in slots.items() if c in by_condition},
                           "answered": tid in progress["choices"]})
        position = next((i for i, t in enumerate(trials) if not t["done"]), len(trials))
        return {"participant_id": pid, "title": experiment.title, "trials": trials, "position": position}

    @app.get("/api/participants/{pid}/trials/{trial_id}/audio/{slot}")
    async def audio(pid: str, trial_id: str, slot: str):
        s = session(pid)
        trial_of(s, trial_id)
        condition = s.slots(trial_id).get(slot)
        if condition is None:
            raise _Bad(404, f"trial {trial_id} has no slot {slot!r}")
        return FileResponse(stimuli_dir / f"{manifest[trial_id][condition]}.wav", media_type="audio/wav",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.put("/api/participants/{pid}/trials/{trial_id}/ratings/{slot}")
    async def rate(pid: str, trial_id: str, slot: str, request: Request):
        s = session(pid)
        trial = trial_of(s, trial_id)
        data = await json_body(request)
        if trial.type != "mushra" or trial_id == experiment.training:
            raise _Bad(409, f"trial {trial_id} is not a rated MUSHRA trial")
        if slot not in s.rated_slots(trial_id):
            raise _Bad(404, f"trial {trial_id} has no rated slot {slot!r}")
        score = data.get("score")
        if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 100:
            raise _Bad(422, f"score {score!r}: a whole number from 0 to 100")
        revisions = store.rate(pid, trial_id, s.slots(trial_id)[slot], score)
        return {"saved": True, "revisions": revisions}

    @app.post("/api/participants/{pid}/trials/{trial_id}/choice")
    async def choose(pid: str, trial_id: str, request: Request):
        """The one answer to an ABX trial (which one X is: "A" or "B") or a remix trial (the stem
        that was generated)."""
        s = session(pid)
        trial = trial_of(s, trial_id)
        data = await json_body(request)
        answer = data.get("answer")
        if trial.type == "abx":
            options, truth = ["A", "B"], "A" if s.slots(trial_id)["X"] == "a" else "B"
        elif trial.type == "remix":
            options, truth = [c for c in trial.sources if c != "mix"], trial.generated
        else:
            raise _Bad(409, f"trial {trial_id} is a MUSHRA trial: rate its stimuli instead")
        if answer not in options:
            raise _Bad(422, f"answer {answer!r}: one of {options}")
        try:
            store.choose(pid, trial_id, trial.type, truth, answer, len(options))
        except ValueError as err:
            raise _Bad(409, str(err)) from None
        return {"saved": True}

    @app.post("/api/participants/{pid}/trials/{trial_id}/done")
    async def done(pid: str, trial_id: str):
        s = session(pid)
        trial = trial_of(s, trial_id)
        progress = store.progress(pid)
        if trial_id != experiment.training:
            if trial.type == "mushra":
                rated = progress["ratings"].get(trial_id, {})
                missing = [sl for sl in s.rated_slots(trial_id) if s.slots(trial_id)[sl] not in rated]
                if missing:
                    raise _Bad(409, f"rate every stimulus first: slot(s) {missing} have no rating")
            elif trial_id not in progress["choices"]:
                raise _Bad(409, "answer the trial's question first")
        store.finish_trial(pid, trial_id)
        if set(s.order) <= {*progress["done"], trial_id}:
            store.finish(pid)
        return {"saved": True}

    @app.post("/api/participants/{pid}/comments", status_code=201)
    async def comment(pid: str, request: Request):
        s = session(pid)
        data = await json_body(request)
        text, trial_id = data.get("text"), data.get("trial_id")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_COMMENT_CHARS:
            raise _Bad(422, f"text: a comment of 1 to {MAX_COMMENT_CHARS} characters")
        if trial_id is not None:
            trial_of(s, str(trial_id))
        store.comment(pid, trial_id, text)  # stored as given; every page escapes it when it shows it
        return {"saved": True}

    uploads = stimuli_dir / "uploads"

    @app.put("/admin/stimuli/{name}", status_code=201)
    async def upload(name: str, request: Request, authorization: str | None = Header(default=None)):
        """A stimulus file for experiments (the request body is the file): refused with the reason
        unless it is WAV or FLAC, at least 32 kHz, 1-30 s, not silent, not clipped. Stored as
        `<stimuli dir>/uploads/<name>`; an experiment file names it by that path."""
        admin(authorization)
        if not UPLOAD_NAME.match(name):
            raise _Bad(422, f"file name {name!r}: 1-64 letters, digits, '_' or '-', then .wav or .flac")
        body = await request.body()
        if len(body) > MAX_UPLOAD_BYTES:
            raise _Bad(413, f"upload over {MAX_UPLOAD_BYTES} bytes")
        uploads.mkdir(parents=True, exist_ok=True)
        partial = uploads / f".{secrets.token_hex(8)}.{name.rsplit('.', 1)[1]}"
        partial.write_bytes(body)
        try:
            wav, sr = read_stimulus(partial, name)
            if sr < MIN_UPLOAD_RATE:
                raise AudioError(f"{name}: {sr} Hz is below {MIN_UPLOAD_RATE} Hz; upload the high-rate original")
            clipped = float((abs(wav) >= CLIP_LEVEL).mean())
            if clipped > MAX_CLIPPED_SHARE:
                raise AudioError(f"{name}: {clipped:.2%} of its samples are at full scale (clipped); lower its level")
        except AudioError as err:
            partial.unlink()
            raise _Bad(422, str(err)) from None
        partial.replace(uploads / name)  # whole or not at all
        return {"name": name, "path": str(Path("uploads") / name), "sample_rate": sr, "channels": wav.shape[0],
                "seconds": wav.shape[-1] / sr}

    @app.get("/admin/export.json")
    async def export_json(authorization: str | None = Header(default=None)):
        admin(authorization)
        return {name: store.rows(name) for name in ("participants", "ratings", "choices", "trials_done", "comments")}

    @app.get("/admin/export.csv")
    async def export_csv(authorization: str | None = Header(default=None)):
        admin(authorization)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["kind", "participant_id", "trial_id", "condition", "score_or_answer", "correct", "at"])
        for r in store.rows("ratings"):
            writer.writerow(["mushra", r["participant_id"], r["trial_id"], r["condition"], r["score"], "", r["rated_at"]])
        for r in store.rows("choices"):
            writer.writerow([r["kind"], r["participant_id"], r["trial_id"], f"truth={r['truth']}", r["answer"],
                             r["correct"], r["answered_at"]])
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="listening.csv"'})

    @app.get("/admin/summary.json")
    async def summary(authorization: str | None = Header(default=None)):
        admin(authorization)
        kept, excluded = post_screen(store.rows("ratings"))
        return {"counts": store.counts(), "excluded_assessors": excluded, "mushra": mushra_summary(kept),
                "choices": choice_summary(store.rows("choices")),
                "sessions": [{"participant_id": r["id"], "finished": r["finished_at"] is not None}
                             for r in store.rows("participants")]}

    return app

"""The serving application on Ray Serve: an HTTP ingress that routes, a planner, one deployment per synthesis variant.

    python -m accelerando.serve                         # a local Ray on loopback: http://127.0.0.1:8000
    python -m accelerando.serve --address auto          # join a running Ray cluster instead
    curl -s 127.0.0.1:8000/generate -d '{"prompt": "a waltz in D major at 90 BPM", "seconds": 20, "tier": "premium"}'

Deployments (`build_app`):
- `synthesize-<variant>`, one per variant of Stable-Audio-Lite (`VARIANTS`: full precision, W4A4
  SVDQuant, fewer denoising steps), each replica one section at a time (`max_ongoing_requests=1`);
- `planner`: the plan (tempo, key, sections from the prompt) and the lyrics (`LyricsLM`);
- `front`: the HTTP ingress (FastAPI). It validates the body (`parse_request`: 400/413/422 with the
  fix), records the request in the SQLite `Ledger` before anything can fail, asks the `Router`
  (the same policy the simulation runs) for a variant or a 503 with the reason, then runs the plan,
  the lyrics and the sections concurrently, retrying a section whose replica died (`retries`), and
  answers 200 with the audio's URL or 503 naming the section that failed.

The router books work on predicted service times: each variant's seconds per section, measured
at start-up (the second of two warm-up calls per variant; `ServiceTable`). Ray Serve balances a
variant's calls over its replicas itself; the router's replica timelines are its admission model.
"""


# no `from __future__ import annotations`: Ray ships the routes to the replica by value, and FastAPI
# must find `Request` in their annotations there, not a name to look up
import asyncio
import hashlib
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the routes' annotations here
from fastapi.responses import FileResponse, JSONResponse

from .ledger import Ledger
from .policy import DEFAULT_TIERS, MAX_BODY_BYTES, BadRequest, Router, ServiceTable, decompose, parse_request, plan_request

APP_NAME = "accelerando"
WARMUP_PROMPT = "a calm piano piece in C major at 90 BPM"


@dataclass(frozen=True)
class Variant:
    """How a synthesis deployment runs the model: denoising steps and an optional `quantize_` preset."""

    steps: int
    quantization: str | None = None  # an accelerando.quant.preset method at W4A4, e.g. "svdquant"


VARIANTS = {
    "full": Variant(steps=25),
    "w4a4": Variant(steps=25, quantization="svdquant"),
    "fewer-steps": Variant(steps=8),
}


@dataclass
class ServeConfig:
    """What `build_app` deploys. `model`: "stable-audio-lite" (the committed checkpoint) or "tiny"
    (random weights, 1.5 s sections: tests). `replicas` per variant; `replica_cpus` / `replica_gpus`
    are the Ray resources each synthesis replica asks for (0 CPUs lets three replicas share a
    two-core machine), `threads` its torch threads. `target_scale` multiplies every tier's latency
    target (a small model on a small machine is served against proportionally shorter targets)."""

    model: str = "stable-audio-lite"
    replicas: dict[str, int] = field(default_factory=lambda: {"full": 2, "fewer-steps": 1})
    variants: dict[str, Variant] = field(default_factory=lambda: dict(VARIANTS))
    ledger: str = "serve/ledger.sqlite"
    audio_dir: str | None = "serve/audio"
    section_seconds: float = 10.0
    retries: int = 1
    threads: int = 1
    replica_cpus: float = 0.0
    replica_gpus: float = 0.0
    lyrics_scores: int = 60
    target_scale: float = 1.0
    tiers: dict = field(init=False, repr=False)  # DEFAULT_TIERS with the scaled targets

    def __post_init__(self):
        unknown = sorted(set(self.replicas) - set(self.variants))
        if unknown:
            raise ValueError(f"replicas name unknown variant(s) {unknown}; the variants are {sorted(self.variants)}")
        if self.model not in ("stable-audio-lite", "tiny"):
            raise ValueError(f"model={self.model!r}: serve 'stable-audio-lite' (the committed checkpoint) or 'tiny'")
        if self.retries < 0:
            raise ValueError(f"retries={self.retries}: use 0 (no retry) or more")
        if not self.target_scale > 0:
            raise ValueError(f"target_scale={self.target_scale}: a positive factor on the tiers' latency targets")
        self.tiers = {n: replace(t, latency_target_s=t.latency_target_s * self.target_scale)
                      for n, t in DEFAULT_TIERS.items()}
        # resolved where the server is started: Ray's workers need not share its working directory
        self.ledger = self.ledger if self.ledger == ":memory:" else str(Path(self.ledger).resolve())
        self.audio_dir = str(Path(self.audio_dir).resolve()) if self.audio_dir else None


def parse_replicas(items: list[str]) -> dict[str, int]:
    """["full=2", "fewer-steps=1"] -> {"full": 2, "fewer-steps": 1}; a ValueError names a bad item."""
    out = {}
    for item in items:
        name, _, n = item.partition("=")
        if not name or not n.isdigit() or int(n) < 1:
            raise ValueError(f"replicas {item!r}: write VARIANT=N with N >= 1, e.g. full=2")
        out[name] = int(n)
    return out


def load_variant(model: str, variant: Variant, threads: int = 1):
    """The Stable Audio pipeline a synthesis replica runs, quantized when the variant says so."""
    import torch

    torch.set_num_threads(threads)
    if model == "tiny":
        from ..models.stable_audio import build_stable_audio

        pipe = build_stable_audio("tiny", device="cpu")
    else:
        from ..models.stable_audio_lite import load_stable_audio_lite

        pipe = load_stable_audio_lite()
    if variant.quantization:
        from ..quant import preset, quantize_
        from ..quant.objectives import pipeline_calibration

        calib, _ = pipeline_calibration(pipe, [WARMUP_PROMPT], steps=4, seconds=1.0)
        quantize_(pipe.transformer, preset(variant.quantization, 4, 4), calib=calib)
    return pipe


class Synthesizer:
    """One replica of a variant: a prompt and seconds -> audio [channels, samples] float32 at `sr`."""

    def __init__(self, name: str, model: str, variant: Variant, threads: int):
        from ..models.stable_audio_conditioning import max_seconds

        self.name, self.variant = name, variant
        self.pipe = load_variant(model, variant, threads)
        self.max_seconds = max_seconds(self.pipe)

    def limits(self) -> dict:
        return {"variant": self.name, "max_seconds": self.max_seconds, "steps": self.variant.steps}

    def synthesize(self, prompt: str, seconds: float, seed: int) -> dict:
        from ..models.stable_audio_lite import generate

        start = time.perf_counter()
        audio, sr = generate(self.pipe, prompt, seconds=seconds, steps=self.variant.steps, seed=seed)
        return {"audio": np.asarray(audio[0], dtype=np.float32), "sr": int(sr),
                "compute_s": time.perf_counter() - start}


class Planner:
    """The small models before the audio: the plan of a request and its lyrics."""

    def __init__(self, lyrics_scores: int):
        from ..data.lyrics import lyrics_texts
        from ..models.lyrics_lm import LyricsLM

        self.lyrics_lm = LyricsLM.fit(lyrics_texts(lyrics_scores))

    def plan(self, prompt: str, seconds: float, section_seconds: float) -> dict:
        from .policy import MusicRequest

        return asdict(plan_request(MusicRequest(prompt, seconds, "free"), section_seconds))

    def lyrics(self, seconds: float, seed: int) -> str:
        return self.lyrics_lm.generate(lines=max(1, round(seconds / 5)), seed=seed)


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _read_capped(request: Request) -> bytes:
    """The body, refused with 413 as soon as it passes MAX_BODY_BYTES (a client's Content-Length is not trusted)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body passes {MAX_BODY_BYTES} bytes, the limit")
        chunks.append(chunk)
    return b"".join(chunks)


class Front:
    """The ingress: validation, ledger, routing, dispatch (the FastAPI routes are added by `build_app`)."""

    def __init__(self, planner, synthesizers: dict, config: ServeConfig):
        self.planner, self.synthesizers, self.config = planner, synthesizers, config
        self.ledger = Ledger(config.ledger)
        self.router: Router | None = None
        self._starting = asyncio.Lock()
        self.section_seconds = config.section_seconds
        self.audio_dir = Path(config.audio_dir) if config.audio_dir else None
        if self.audio_dir:
            self.audio_dir.mkdir(parents=True, exist_ok=True)

    async def start(self) -> dict:
        """Measure each variant on one warm-up section and build the router from those service times."""
        async with self._starting:
            if self.router is None:
                await self._measure()
        return self.service

    async def _measure(self) -> None:
        limits = {v: await h.limits.remote() for v, h in self.synthesizers.items()}
        self.section_seconds = min([self.config.section_seconds] + [x["max_seconds"] for x in limits.values()])
        section_s = {}
        for variant, handle in self.synthesizers.items():
            for _ in range(2):  # the second call is timed: the first pays one-time set-up
                start = time.perf_counter()
                await handle.synthesize.remote(WARMUP_PROMPT, self.section_seconds, 0)
            section_s[variant] = time.perf_counter() - start
        start = time.perf_counter()
        await self.planner.plan.remote(WARMUP_PROMPT, 30.0, self.section_seconds)
        plan_s = time.perf_counter() - start
        start = time.perf_counter()
        await self.planner.lyrics.remote(30.0, 0)
        lyrics_s = time.perf_counter() - start
        # a section costs the same whatever its length: the pipeline denoises and decodes its whole window
        service = ServiceTable({v: 0.0 for v in section_s}, overhead_s=section_s, fixed={"plan": plan_s, "lyrics": lyrics_s})
        self.router = Router(service, {v: n for v, n in self.config.replicas.items() if v in self.synthesizers},
                             self.config.tiers, self.section_seconds)
        self.service = {"section_seconds": self.section_seconds, "seconds_per_section": section_s,
                        "plan_s": plan_s, "lyrics_s": lyrics_s, "measured_on": "the second of two calls each, at start-up"}

    async def _section(self, request_id: str, variant: str, prompt: str, seconds: float, index: int, seed: int) -> dict:
        errors = []
        for attempt in range(1 + self.config.retries):
            self.ledger.attempt_started(request_id, "synthesis", index, variant, attempt)
            try:
                out = await self.synthesizers[variant].synthesize.remote(prompt, seconds, seed)
            except Exception as err:  # a dead replica, an out-of-memory kill: recorded, then retried
                message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                self.ledger.attempt_finished(request_id, "synthesis", index, attempt, message)
                errors.append(message)
                continue
            self.ledger.attempt_finished(request_id, "synthesis", index, attempt)
            return {**out, "attempts": attempt + 1}
        raise RuntimeError(f"section {index} failed on {variant} after {len(errors)} attempt(s): {errors[-1]}")

    async def generate(self, request: Request) -> JSONResponse:
        arrived, request_id = time.monotonic(), uuid.uuid4().hex
        try:
            body = await _read_capped(request)
            music = parse_request(body, self.config.tiers)
        except BadRequest as err:
            self.ledger.received(request_id, None, None, None)
            self.ledger.invalid(request_id, err.status, err.message)
            return _error(err.status, err.message, id=request_id, state="invalid")
        request_id = music.id or request_id
        try:
            self.ledger.received(request_id, music.tier, music.seconds, music.prompt)
        except ValueError as err:
            return _error(409, str(err), id=request_id, state="invalid")
        if self.router is None:
            await self.start()
        decision = self.router.route(music, arrived)
        self.ledger.decided(request_id, decision.accepted, decision.status, decision.reason, decision.variant,
                            decision.predicted_finish)
        if not decision.accepted:
            return _error(503, decision.reason, id=request_id, state="rejected", tier=music.tier)
        tasks = decompose(music, self.section_seconds)
        seed = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "little") >> 1  # same id, same music
        try:
            plan = await self.planner.plan.remote(music.prompt, music.seconds, self.section_seconds)
            lyrics = await self.planner.lyrics.remote(music.seconds, seed) if plan["lyrics"] else None
            sections = await asyncio.gather(*[
                self._section(request_id, decision.variant, music.prompt, t.seconds, t.index, seed + t.index)
                for t in tasks if t.kind == "synthesis"])
        except Exception as err:
            reason = str(err)
            self.ledger.finished(request_id, ok=False, status=503, reason=reason)
            return _error(503, reason, id=request_id, state="failed", tier=music.tier)
        audio_url = None
        if self.audio_dir:
            import soundfile as sf

            audio = np.concatenate([s["audio"] for s in sections], axis=-1)
            sf.write(self.audio_dir / f"{request_id}.wav", audio.T, sections[0]["sr"])
            audio_url = f"/audio/{request_id}"
        latency = time.monotonic() - arrived
        self.ledger.finished(request_id, ok=True, status=200)
        return JSONResponse({
            "id": request_id, "state": "completed", "tier": music.tier, "variant": decision.variant,
            "latency_s": latency, "predicted_latency_s": decision.predicted_finish - arrived,
            "plan": plan, "lyrics": lyrics, "audio_url": audio_url,
            "sections": [{"index": i, "attempts": s["attempts"], "compute_s": s["compute_s"]}
                         for i, s in enumerate(sections)]})


def build_app(config: ServeConfig):
    """The Ray Serve application (bind it with `serve.run(build_app(config), name=APP_NAME)`)."""
    from ray import serve

    http = FastAPI(title="accelerando", description="Music generation within a tier's latency target")

    @serve.deployment(name="front", max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(http)
    class FrontDeployment(Front):
        @http.post("/generate")
        async def post_generate(self, request: Request):
            return await self.generate(request)

        @http.get("/health")
        async def health(self):
            return {"service": await self.start(), "replicas": self.config.replicas,
                    "targets_s": {n: t.latency_target_s for n, t in self.config.tiers.items()}}

        @http.get("/ledger")
        async def ledger(self, rows: bool = False):
            out = {"account": self.ledger.account(), "running": self.ledger.running()}
            if rows:
                out["requests"] = self.ledger.rows("requests")
                out["attempts"] = self.ledger.rows("attempts")
            return out

        @http.get("/audio/{request_id}")
        async def audio(self, request_id: str):
            path = self.audio_dir / f"{request_id}.wav" if self.audio_dir else None
            if path is None or not path.is_file() or path.parent != self.audio_dir:
                return _error(404, f"no audio for request {request_id!r}: it was never completed here")
            return FileResponse(path, media_type="audio/wav")

    planner = serve.deployment(Planner, name="planner", ray_actor_options={"num_cpus": 0}).bind(config.lyrics_scores)
    synthesizers = {}
    for name, n in config.replicas.items():
        deployment = serve.deployment(
            Synthesizer, name=f"synthesize-{name}", num_replicas=n, max_ongoing_requests=1,
            ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus})
        synthesizers[name] = deployment.bind(name, config.model, config.variants[name], config.threads)
    return FrontDeployment.bind(planner, synthesizers, config)


def start_server(config: ServeConfig, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                 num_cpus: int | None = None) -> str:
    """Start (or join, with `address`) Ray, deploy the application and wait until its service times are
    measured; returns the base URL. A local Ray listens on loopback only."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    import httpx

    # over HTTP, not the handle: a handle's blocking call refuses to run inside a notebook's event loop
    httpx.get(f"{url}/health", timeout=1800).raise_for_status()
    return url


def stop_server() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def kill_replica(variant: str) -> str:
    """Kill one replica of `variant`'s deployment (a fault test): Ray Serve starts a replacement, and
    calls in flight on it fail into the front's retry. Returns the killed actor's name."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if f"#synthesize-{variant}#" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    if not names:
        raise LookupError(f"no running replica of synthesize-{variant}")
    actor = names[0]
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    return actor["name"]

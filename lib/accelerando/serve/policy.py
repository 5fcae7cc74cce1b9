"""Many requests: validation, decomposition into sub-tasks, and routing within a tier's latency target.

    request = parse_request(body)                      # BadRequest (status, message) on anything malformed
    router = Router(ServiceTable(...), replicas={"full": 2, "fewer-steps": 1})
    decision = router.route(request, now=time.monotonic())
    decision.accepted, decision.status, decision.reason, decision.assignments

A request ("a two-minute folk song in A minor with lyrics about the sea", 120 s, tier "premium")
becomes sub-tasks: a plan (tempo, metre, key and sections, from what the prompt states), lyrics when
the prompt asks for words, and one synthesis per section of at most `section_seconds`. Each
sub-task runs on a variant of its model; variants are ranked by quality (`QUALITY_ORDER`) and
cost what the `ServiceTable` says they cost on this deployment (measured, or predicted by
`accelerando.distributed.cost_model`). The router gives a request the best variant whose predicted
finish, on the replicas' current queues, meets the tier's latency target; when none does, it
rejects the request with status 503 and the reason, never drops it silently. Replicas reserved for
higher tiers (`Tier.may_use`) keep a free tier's backlog from delaying premium requests.

This module is the policy only, without a clock or a transport: the Ray Serve application and the
discrete-event simulation both drive it, so what is simulated is what is served.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from ..musical_controls import MusicalControls

MAX_BODY_BYTES = 16_384
MAX_PROMPT_CHARS = 500
MAX_SECONDS = 600.0
QUALITY_ORDER = ("full", "w4a4", "fewer-steps")  # best first
LYRICS = re.compile(r"\b(lyrics|sung|sings?|singing|vocals?|words)\b", re.IGNORECASE)


class BadRequest(ValueError):
    """A request that cannot be served as sent: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Tier:
    """A quality-of-service tier: the latency a request may take (seconds from arrival to its last
    sub-task's end), the variants it may get (best first), and the replicas it may use: all but
    the first `reserved` replicas of each variant that a tier without a reservation runs, which
    those tiers keep."""

    name: str
    latency_target_s: float
    variants: tuple[str, ...] = QUALITY_ORDER
    reserved: int = 0

    def may_use(self, replica: int) -> bool:
        return replica >= self.reserved


# Policy, not measurement: targets a deployment is configured with (the load test reports whether
# they are met).
DEFAULT_TIERS = {
    "premium": Tier("premium", 60.0, ("full", "w4a4")),
    "standard": Tier("standard", 180.0, QUALITY_ORDER, reserved=1),
    "free": Tier("free", 600.0, QUALITY_ORDER, reserved=1),
}


@dataclass(frozen=True)
class MusicRequest:
    prompt: str
    seconds: float
    tier: str
    id: str = ""


def parse_request(body: bytes | str, tiers: dict[str, Tier] = DEFAULT_TIERS) -> MusicRequest:
    """A JSON body {"prompt": str, "seconds": number, "tier": str, "id"?: str} -> MusicRequest.
    Raises BadRequest: 413 for a body over MAX_BODY_BYTES, 400 for malformed JSON or a body that is
    not an object, 422 for a missing, mistyped or out-of-range field, each naming the fix."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(400, f"request body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, 'request body must be a JSON object: {"prompt": ..., "seconds": ..., "tier": ...}')
    unknown = sorted(set(data) - {"prompt", "seconds", "tier", "id"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}: a request has prompt, seconds, tier and optionally id")
    prompt, seconds, tier = data.get("prompt"), data.get("seconds"), data.get("tier")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(422, "prompt must be a non-empty string describing the music")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(422, f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise BadRequest(422, f"seconds must be a number of seconds of audio, got {seconds!r}")
    if not 0 < seconds <= MAX_SECONDS:
        raise BadRequest(422, f"seconds={seconds}: ask for more than 0 and at most {MAX_SECONDS:g} s of audio")
    if tier not in tiers:
        raise BadRequest(422, f"tier {tier!r} is unknown; choose one of {sorted(tiers)}")
    request_id = data.get("id", "")
    if not isinstance(request_id, str):
        raise BadRequest(422, f"id must be a string, got {request_id!r}")
    return MusicRequest(prompt.strip(), float(seconds), tier, request_id)


@dataclass(frozen=True)
class SubTask:
    """One piece of a request: kind "plan", "lyrics" or "synthesis" (section `index`, `seconds` long)."""

    kind: str
    seconds: float
    index: int = 0


@dataclass(frozen=True)
class Plan:
    """What the prompt fixes before any audio: tempo, metre and key where stated, and the sections."""

    bpm: float | None
    key: tuple[int, str] | None
    sections: tuple[float, ...]
    lyrics: bool


def plan_request(request: MusicRequest, section_seconds: float = 10.0) -> Plan:
    """The request's plan: the tempo and key its prompt states (`MusicalControls.from_caption`),
    whether it asks for words, and sections of at most `section_seconds` covering its duration."""
    if not section_seconds > 0:
        raise ValueError(f"section_seconds={section_seconds}: sections need a positive length")
    controls = MusicalControls.from_caption(request.prompt, request.seconds)
    bpm = None
    if controls.beats is not None and len(controls.beats) >= 2:
        bpm = 60.0 / (controls.beats[1] - controls.beats[0])
    whole, rest = divmod(request.seconds, section_seconds)
    sections = (section_seconds,) * int(whole) + ((rest,) if rest > 1e-9 else ())
    return Plan(bpm, controls.key, sections, bool(LYRICS.search(request.prompt)))


def decompose(request: MusicRequest, section_seconds: float = 10.0) -> list[SubTask]:
    """Sub-tasks in the order they run: the plan, the lyrics when asked for, one synthesis per section."""
    plan = plan_request(request, section_seconds)
    tasks = [SubTask("plan", request.seconds)]
    if plan.lyrics:
        tasks.append(SubTask("lyrics", request.seconds))
    tasks += [SubTask("synthesis", s, i) for i, s in enumerate(plan.sections)]
    return tasks


@dataclass
class ServiceTable:
    """Seconds a sub-task takes on one replica of a variant: `fixed[kind]` for plan and lyrics
    (they run on their own small models, whatever the variant), `per_audio_second[variant]` x the
    section's seconds + `overhead_s[variant]` for synthesis."""

    per_audio_second: dict[str, float]
    overhead_s: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=lambda: {"plan": 0.05, "lyrics": 0.5})

    def seconds(self, task: SubTask, variant: str) -> float:
        if task.kind != "synthesis":
            return self.fixed[task.kind]
        if variant not in self.per_audio_second:
            raise KeyError(f"no service time for variant {variant!r}: the table has {sorted(self.per_audio_second)}")
        return self.per_audio_second[variant] * task.seconds + self.overhead_s.get(variant, 0.0)


@dataclass(frozen=True)
class Assignment:
    task: SubTask
    variant: str
    replica: int
    start: float
    finish: float


@dataclass(frozen=True)
class Decision:
    """The router's answer: accepted (status 202) with its assignments and predicted finish, or
    rejected (status 503) with the reason."""

    request: MusicRequest
    accepted: bool
    status: int
    reason: str
    variant: str | None = None
    assignments: tuple[Assignment, ...] = ()
    predicted_finish: float | None = None


class Router:
    """Chooses a variant per request and books its sub-tasks on the replicas' queues."""

    def __init__(self, service: ServiceTable, replicas: dict[str, int], tiers: dict[str, Tier] = DEFAULT_TIERS,
                 section_seconds: float = 10.0):
        bad = {v: n for v, n in replicas.items() if n < 1}
        if bad:
            raise ValueError(f"replicas {bad}: every deployed variant needs at least one replica")
        self.service, self.tiers, self.section_seconds = service, tiers, section_seconds
        self.free_at = {variant: [0.0] * n for variant, n in replicas.items()}
        self.helper_free_at = 0.0  # plan and lyrics run on one small-model replica

    def _book(self, tasks: list[SubTask], variant: str, tier: Tier, now: float) -> tuple[list[Assignment], float] | None:
        """Where the sub-tasks would run on `variant` (earliest free allowed replica, sections in
        parallel after the plan and lyrics), without booking; None if the tier may use no replica."""
        # a reservation keeps replicas for the tiers without one, so only of variants those tiers run
        protected = any(variant in t.variants for t in self.tiers.values() if t.reserved == 0)
        allowed = [r for r in range(len(self.free_at[variant])) if not protected or tier.may_use(r)]
        if not allowed:
            return None
        free = list(self.free_at[variant])
        ready, helper, out = now, max(now, self.helper_free_at), []
        for task in tasks:
            if task.kind != "synthesis":
                start = max(ready, helper)
                finish = start + self.service.seconds(task, variant)
                out.append(Assignment(task, "helper", -1, start, finish))
                ready = helper = finish
        for task in (t for t in tasks if t.kind == "synthesis"):
            replica = min(allowed, key=lambda r: free[r])
            start = max(ready, free[replica])
            free[replica] = start + self.service.seconds(task, variant)
            out.append(Assignment(task, variant, replica, start, free[replica]))
        return out, max(a.finish for a in out)

    def route(self, request: MusicRequest, now: float) -> Decision:
        """Book `request` on the best variant that meets its tier's target from `now`, or reject it."""
        tier = self.tiers.get(request.tier)
        if tier is None:
            return Decision(request, False, 422, f"tier {request.tier!r} is unknown; choose one of {sorted(self.tiers)}")
        tasks = decompose(request, self.section_seconds)
        best: tuple[str, float] | None = None
        for variant in (v for v in tier.variants if v in self.free_at):
            booked = self._book(tasks, variant, tier, now)
            if booked is None:
                continue
            assignments, finish = booked
            if best is None or finish < best[1]:
                best = (variant, finish)
            if finish - now <= tier.latency_target_s:
                for a in assignments:
                    if a.replica >= 0:
                        self.free_at[variant][a.replica] = max(self.free_at[variant][a.replica], a.finish)
                self.helper_free_at = max([self.helper_free_at] + [a.finish for a in assignments if a.replica < 0])
                return Decision(request, True, 202, f"{variant} meets the {tier.name} target", variant,
                                tuple(assignments), finish)
        if best is None:
            reason = (f"no replica serves the {tier.name} tier: it allows {list(tier.variants)}, and of those this "
                      f"deployment runs {[v for v in tier.variants if v in self.free_at]}, with the first "
                      f"{tier.reserved} replica(s) of each reserved for higher tiers")
        else:
            reason = (f"the {tier.name} target of {tier.latency_target_s:g} s cannot be met: the fastest variant "
                      f"({best[0]}) would finish in {best[1] - now:.1f} s on the current queues")
        return Decision(request, False, 503, reason)

"""The efficiency dashboard's data: every run record, and the rows its charts compare.

    records = find_records()                       # book/records/*.json and runs/**/records/*.json
    log = [summary(r) for r in records]            # the experiment log: one row per run
    efficiency_rows(records)                       # latency per 10 s of audio and peak memory, per measurement
    quality_rows(records)                          # fidelity to full precision per method and bit width

Records are the chapters' own (`accelerando.record`); nothing here measures anything. A
measurement enters the latency chart when it has a median latency and the length of audio it
covers, so that different chapters' rows share one unit (seconds per 10 s of audio); rows of
different runs carry their CPU, because absolute times compare only within one machine.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .record import BOOK_RECORD_DIR, REPO_ROOT

RUNS_DIR = REPO_ROOT / "runs"
LATENCY_FIELDS = ("latency_s_median", "step_s_median")     # seconds for one call of the measured thing
METHOD_FIELDS = ("method", "kernel", "variant", "system", "config", "tokenizer")
BITS = re.compile(r"\bw(\d+)a(\d+)\b")


def record_paths(dirs: list[Path] | None = None) -> list[Path]:
    """The JSON files under `dirs` (default: the book's records and every records folder under
    runs/) that may be records, in order, each once."""
    paths = []
    for d in dirs or [BOOK_RECORD_DIR, RUNS_DIR]:
        paths += sorted(Path(d).glob("*.json")) + sorted(Path(d).glob("**/records/*.json"))
    return list(dict.fromkeys(paths))


def read_record(path: Path) -> dict | None:
    """The record at `path` with `_name` (book/<chapter> or runs/<set>/<chapter>) and `_path`, or
    None when the file is not (or not yet, while it is being written) a readable record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or "chapter" not in record:
        return None
    try:
        name = str(path.resolve().relative_to(REPO_ROOT).with_suffix(""))
    except ValueError:
        name = str(path.with_suffix(""))
    return {**record, "_name": name, "_path": str(path)}


def find_records(dirs: list[Path] | None = None) -> list[dict]:
    """Every readable record under `dirs` (see `record_paths`); a file that is not a record is skipped."""
    return [r for r in map(read_record, record_paths(dirs)) if r is not None]


def summary(record: dict) -> dict:
    """One row of the experiment log."""
    hw = record.get("hardware", {})
    figures = record.get("figures", {})
    return {"name": record["_name"], "chapter": record["chapter"], "param_set": record.get("param_set"),
            "started": record.get("started"), "finished": record.get("finished"), "cpu": hw.get("cpu"),
            "cpu_flags": hw.get("cpu_flags", []), "threads": hw.get("torch_threads"),
            "commit": (record.get("git") or {}).get("commit"), "measurements": len(record.get("measurements", [])),
            "figures": {k: v.get("value") if isinstance(v, dict) else v for k, v in figures.items()}}


def _audio_seconds(m: dict) -> float | None:
    for key, scale in (("audio_seconds", 1.0), ("seconds", 1.0), ("minutes", 60.0)):
        value = m.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value) * scale
    return None


def _method(m: dict) -> str:
    for key in METHOD_FIELDS:
        if isinstance(m.get(key), str):
            return m[key]
    return m.get("component", "?")


def efficiency_rows(records: list[dict]) -> list[dict]:
    """Per measurement with a median latency and an audio length: run, chapter, CPU, component,
    method, audio seconds, latency (s), latency per 10 s of audio (s) and peak memory (bytes, or
    None where it was not measured)."""
    rows = []
    for r in records:
        cpu = r.get("hardware", {}).get("cpu")
        for m in r.get("measurements", []):
            latency = next((m[k] for k in LATENCY_FIELDS if isinstance(m.get(k), (int, float))), None)
            seconds = _audio_seconds(m)
            if latency is None or seconds is None or not math.isfinite(latency):
                continue
            memory = m.get("peak_mem_bytes") or m.get("peak_mem_delta_bytes")
            rows.append({"run": r["_name"], "chapter": r["chapter"], "cpu": cpu, "started": r.get("started"),
                         "component": m.get("component"), "method": _method(m), "audio_seconds": seconds,
                         "latency_s": float(latency), "latency_per_10s": 10.0 * float(latency) / seconds,
                         "peak_memory_bytes": memory})
    return rows


def quality_rows(records: list[dict], metric: str = "mrstft") -> list[dict]:
    """Fidelity to full precision (`metric`, lower is closer) averaged per run and method over the
    `fidelity` measurements; methods named like "svdquant w4a4" are split into method and bits."""
    sums: dict[tuple, list[float]] = {}
    for r in records:
        for m in r.get("measurements", []):
            if m.get("component") != "fidelity" or not isinstance(m.get(metric), (int, float)):
                continue
            sums.setdefault((r["_name"], r["chapter"], r.get("started"), m.get("method", "?")), []).append(m[metric])
    rows = []
    for (run, chapter, started, method), values in sums.items():
        bits = BITS.search(method)
        rows.append({"run": run, "chapter": chapter, "started": started, "method": BITS.sub("", method).strip(),
                     "bits": bits.group(0) if bits else "", "metric": metric, "value": sum(values) / len(values),
                     "n": len(values)})
    return rows

"""`python -m accelerando.bench SUITE ...`: run a benchmark suite, one JSON record per measurement.

    python -m accelerando.bench baseline --preset tiny --json
    python -m accelerando.bench baseline --preset full --seconds 1 10 47.55 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..machine import default_device, set_threads

# The MusicGen preset measured next to each Stable Audio preset.
MUSICGEN_FOR = {"full": "small", "small": "tiny", "tiny": "tiny"}


def baseline(args) -> list[dict]:
    from ..models import build_musicgen, build_stable_audio
    from .baseline import musicgen_decode_sweep, stable_audio_sweep

    device = torch.device(args.device or default_device())
    torch.manual_seed(args.seed)
    records = []
    pipe = build_stable_audio(args.preset, weights=args.weights, device=device)
    meta = build_stable_audio(args.preset, device="meta")
    for rec in stable_audio_sweep(
        pipe, args.seconds, flops_pipe=meta, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget_s, device=device
    ):
        records.append(_emit(rec | {"model": f"stable-audio-open:{args.preset}"}, args.json))
    del pipe, meta
    model = build_musicgen(MUSICGEN_FOR[args.preset], device=device)
    meta = build_musicgen(MUSICGEN_FOR[args.preset], device="meta")
    for rec in musicgen_decode_sweep(
        model, args.context_frames, flops_model=meta, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget_s, device=device
    ):
        records.append(_emit(rec | {"model": f"musicgen:{MUSICGEN_FOR[args.preset]}"}, args.json))
    return records


def _emit(record: dict, as_json: bool) -> dict:
    if as_json:
        print(json.dumps(record), flush=True)
    else:
        lat = record["latency_s_min"]
        secs = record.get("audio_seconds")
        print(f"{record['component']:<26} {'' if secs is None else f'{secs:7.2f} s':>9}  "
              f"min {lat:9.4f} s  median {record['latency_s_median']:9.4f} s  "
              f"peak {record['peak_mem_bytes'] / 2**20 if record['peak_mem_bytes'] else float('nan'):8.0f} MiB", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accelerando.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="suite", required=True)
    p = sub.add_parser("baseline", help="Stable Audio Open component costs and MusicGen decoding speed")
    p.add_argument("--preset", choices=sorted(MUSICGEN_FOR), default="tiny", help="model size (full = published configs)")
    p.add_argument("--weights", help="local Stable Audio Open directory (default: random weights)")
    p.add_argument("--seconds", type=float, nargs="+", default=[1.0, 4.0, 10.0], help="audio lengths to measure")
    p.add_argument("--context-frames", type=int, nargs="+", default=[50, 250, 500], help="MusicGen context lengths")
    p.add_argument("--threads", type=int, default=1, help="torch threads (fixed and recorded)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=None, help="stop repeating after this many timed seconds")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per measurement on stdout")
    args = parser.parse_args(argv)
    if any(s <= 0 for s in args.seconds):
        parser.error(f"--seconds must be positive, got {args.seconds}")
    set_threads(args.threads)
    try:
        baseline(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

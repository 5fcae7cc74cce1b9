"""Command line: build, inspect and validate corpora.

python -m accelerando.data build --preset small [--out data/] [--n-clips 500] [--seconds 10]
python -m accelerando.data speech [--n 120] [--out data/]
python -m accelerando.data validate data/music-<key> [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from .config import PRESETS, preset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m accelerando.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or reuse) a music corpus and print its summary")
    b.add_argument("--preset", default="small", help=f"one of {sorted(PRESETS)}")
    b.add_argument(
        "--out", default=None, help="cache root (default: $ACCELERANDO_DATA or data/ at the repo root)"
    )
    b.add_argument("--n-clips", type=int)
    b.add_argument("--seconds", type=float)
    b.add_argument("--sample-rate", type=int, help="Hz")
    b.add_argument("--channels", type=int)
    b.add_argument("--seed", type=int)
    b.add_argument("--workers", type=int)
    b.add_argument("--format", dest="audio_format", choices=("flac", "wav"))
    b.add_argument("--force", action="store_true", help="rebuild even if the cache holds this corpus")
    s = sub.add_parser("speech", help="build the eSpeak NG speech corpus")
    s.add_argument("--n", type=int, default=120, help="utterances")
    s.add_argument("--out", default=None)
    s.add_argument("--seed", type=int, default=0)
    v = sub.add_parser(
        "validate", help="measure how well a corpus's audio carries its ground truth (needs librosa)"
    )
    v.add_argument("path")
    v.add_argument("--limit", type=int, default=200, help="clips to measure (the first N)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    if args.command == "build":
        from .corpus import build_corpus

        names = ("n_clips", "seconds", "sample_rate", "channels", "seed", "workers", "audio_format")
        overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        t0 = time.perf_counter()
        corpus = build_corpus(preset(args.preset, **overrides), root=args.out, force=args.force)
        s = corpus.summary
        print(f"corpus     {corpus.path}")
        print(
            f"clips      {s['n_clips']} ({s['audio_seconds'] / 3600:.2f} h of audio, {corpus.config.seconds} s at {corpus.config.sample_rate} Hz)"
        )
        print(f"splits     {s['per_split']}   (works {s['works']}, groups {s['groups']})")
        print(f"genres     {s['per_genre']}")
        print(f"ensembles  {s['per_ensemble']}")
        print(f"drums      {s['with_drums']} clips; tempo ramps {s['tempo_ramps']} clips")
        print(f"skipped    {s['skipped_works']} works; dropped {s['failed_clips']} clips (silent/NaN)")
        print(f"time       build {s['build_seconds']} s (this call {time.perf_counter() - t0:.1f} s)")
    elif args.command == "speech":
        from .speech import SpeechConfig, build_speech_corpus

        corpus = build_speech_corpus(SpeechConfig(n_utterances=args.n, seed=args.seed), root=args.out)
        print(f"corpus  {corpus.path}")
        print(json.dumps({k: v for k, v in corpus.summary.items() if k != "config"}, indent=1))
    else:
        from .corpus import Corpus
        from .validate import validate

        corpus = Corpus(args.path)
        print(json.dumps(validate(corpus.clips[: args.limit]), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

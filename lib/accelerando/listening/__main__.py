"""Listening tests from the command line.

    python -m accelerando.listening make-experiment --from 04_svdquant_audio --reference full_precision \\
        --abx svdquant_w4a4 --out listening/svdquant.yml
    python -m accelerando.listening serve --experiment listening/svdquant.yml      # http://127.0.0.1:8010
    python -m accelerando.listening serve --db postgresql+psycopg://me@db/listening --port 8011
    python -m accelerando.listening serve      # no experiment: the dashboard of every run record at /dashboard

`serve` prints the admin token (or takes ACCELERANDO_LISTENING_TOKEN); the admin page is /admin.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from collections import defaultdict
from pathlib import Path

import yaml

BOOK_AUDIO = Path(__file__).resolve().parents[3] / "book" / "audio"
CLIP = re.compile(r"^(?P<condition>.+)_(?P<index>\d+)\.(ogg|wav|flac)$")


def experiment_from_chapter(chapter: str, reference: str, abx: list[str], audio_root: Path = BOOK_AUDIO) -> dict:
    """An experiment spec from a chapter's stored audio (`<condition>_<index>.<ext>` files): one
    MUSHRA trial per index that has the reference, its other conditions as the conditions, one
    ABX trial of the reference against each `abx` condition per index; the first trial trains."""
    folder = audio_root / chapter
    if not folder.is_dir():
        known = sorted(p.name for p in audio_root.iterdir()) if audio_root.is_dir() else []
        raise SystemExit(f"no stored audio for chapter {chapter!r} in {audio_root}; chapters with audio: {known}")
    clips: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        m = CLIP.match(path.name)
        if m:
            clips[m["index"]][m["condition"]] = str(path)
    trials = []
    for index, conditions in sorted(clips.items(), key=lambda kv: int(kv[0])):
        if reference not in conditions:
            continue
        others = {c: p for c, p in conditions.items() if c != reference}
        if others:
            trials.append({"id": f"clip-{index}", "type": "mushra", "reference": conditions[reference], "conditions": others})
        for c in abx:
            if c in conditions:
                trials.append({"id": f"clip-{index}-abx-{c}", "type": "abx", "a": conditions[reference], "b": conditions[c]})
    if not trials:
        names = sorted({c for cs in clips.values() for c in cs})
        raise SystemExit(f"chapter {chapter}: no clip has reference {reference!r}; its conditions are {names}")
    return {"name": re.sub(r"[^A-Za-z0-9_.-]", "-", chapter), "title": f"Listening test: {chapter}",
            "training": trials[0]["id"], "trials": trials}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m accelerando.listening", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the participants' page, the admin and the API")
    s.add_argument("--experiment", default=None, help="experiment YAML (none: the page says how to make one)")
    s.add_argument("--db", default="sqlite:///listening/listening.sqlite", help="SQLAlchemy URL of the answers")
    s.add_argument("--stimuli-dir", default="listening/stimuli", help="where the prepared stimuli are written")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8010)
    s.add_argument("--records", nargs="*", default=None, metavar="DIR",
                   help="run-record folders the dashboard shows (default: book/records and runs/)")
    m = sub.add_parser("make-experiment", help="an experiment file from a chapter's stored audio")
    m.add_argument("--from", dest="chapter", required=True, help="chapter name, e.g. 04_svdquant_audio")
    m.add_argument("--reference", required=True, help="the condition heard as the reference, e.g. full_precision")
    m.add_argument("--abx", nargs="*", default=[], help="conditions also tested ABX against the reference")
    m.add_argument("--out", required=True, help="the experiment YAML to write")
    args = p.parse_args(argv)

    if args.command == "make-experiment":
        spec = experiment_from_chapter(args.chapter, args.reference, args.abx)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(spec, sort_keys=False))
        print(f"{out}: {len(spec['trials'])} trials from {args.chapter}")
        return

    import uvicorn

    from .app import create_app
    from .experiment import Experiment, ExperimentError
    from .store import Store

    token = os.environ.get("ACCELERANDO_LISTENING_TOKEN") or secrets.token_urlsafe(24)
    if args.db.startswith("sqlite:///"):
        Path(args.db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        experiment = Experiment.load(args.experiment) if args.experiment else None
        app = create_app(experiment, Store(args.db), args.stimuli_dir, token,
                         record_dirs=[Path(d) for d in args.records] if args.records else None)
    except (ExperimentError, ValueError) as err:
        sys.exit(f"cannot serve: {err}")
    if "ACCELERANDO_LISTENING_TOKEN" not in os.environ:
        print(f"admin token: {token}  (set ACCELERANDO_LISTENING_TOKEN to choose one)", flush=True)
    print(f"listening test on http://{args.host}:{args.port}/ (admin: /admin, dashboard: /dashboard)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""python -m accelerando.serve: the serving application on a local Ray (loopback) or a Ray cluster.

    python -m accelerando.serve [--port 8000] [--replicas full=2 fewer-steps=1 w4a4=1] [--model tiny]
    python -m accelerando.serve --address auto        # deploy onto the cluster `ray start` made
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> None:
    from .app import ServeConfig, parse_replicas, start_server, stop_server

    p = argparse.ArgumentParser(prog="python -m accelerando.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=None, help="a Ray cluster to join (e.g. auto, ray://host:10001); "
                   "none: start a local Ray on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="stable-audio-lite", choices=["stable-audio-lite", "tiny"])
    p.add_argument("--replicas", nargs="+", default=["full=2", "fewer-steps=1"], metavar="VARIANT=N")
    p.add_argument("--ledger", default="serve/ledger.sqlite", help="SQLite file of every request and its outcome")
    p.add_argument("--audio-dir", default="serve/audio")
    p.add_argument("--replica-cpus", type=float, default=0.0)
    p.add_argument("--replica-gpus", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per synthesis replica")
    p.add_argument("--target-scale", type=float, default=1.0, help="factor on every tier's latency target")
    args = p.parse_args(argv)
    try:
        config = ServeConfig(model=args.model, replicas=parse_replicas(args.replicas), ledger=args.ledger,
                             audio_dir=args.audio_dir, replica_cpus=args.replica_cpus,
                             replica_gpus=args.replica_gpus, threads=args.threads, target_scale=args.target_scale)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    url = start_server(config, address=args.address, host=args.host, port=args.port)
    print(f"serving on {url}: POST /generate, GET /health, GET /ledger, GET /audio/<id> (Ctrl-C stops)", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    stop_server()
    sys.exit(0)


if __name__ == "__main__":
    main()

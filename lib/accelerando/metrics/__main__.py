"""`python -m accelerando.metrics --ref DIR --gen DIR --json`: score generated clips against references.

    python -m accelerando.metrics --ref data/ref --gen runs/gen --json --out runs/metrics.json
    python -m accelerando.metrics --ref data/ref --gen runs/gen --embeddings mel-stats vggish --annotations ann.json

Clips pair by file stem (ref/a.wav with gen/a.flac). Every reference needs a generated partner and
vice versa, or the run stops listing the unmatched names; `--unpaired` drops the paired metrics
(fidelity, transients, scores against the reference) and keeps the set-level ones.

Sections of the JSON: distribution (FAD with n, FAD-inf, KAD per embedding, on all valid clips),
fidelity (per pair), musical (per clip), paired (generated vs reference on metrics both have).
Each metric is {value, ci_low, ci_high, n, n_skipped, method, per_clip} or {skipped: reason}.
Reference beats, keys and boundaries come from `--annotations` when given (see
`load_annotations`: a JSON object by stem, or an accelerando.data manifest.jsonl), else from the
reference audio itself, so identical folders score ideal values (FAD 0 up to rounding; KAD
slightly below 0, because its unbiased estimator treats the two sets as independent samples).
Invalid clips (silent, NaN...) are left out and listed with their reason under "invalid"; +inf is
written as the string "inf".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from threadpoolctl import threadpool_limits

from .. import __version__
from ..audio import AudioError, check_audio, list_audio, load_audio, match_length
from ..machine import set_threads
from . import distribution, fidelity, rhythm, structure, tonal, transients
from .analysis import undefined
from .embeddings import MissingCheckpoint, get_embedding
from .stats import bootstrap_ci, json_safe, paired_comparison

log = logging.getLogger("accelerando.metrics")


class PairingError(ValueError):
    """Reference and generated folders do not pair up by file name."""


def pair_files(ref_dir: Path, gen_dir: Path, *, unpaired: bool = False) -> tuple[dict, dict, list[str]]:
    """({stem: ref path}, {stem: gen path}, paired stems). Raises PairingError listing unmatched names."""
    ref, gen = list_audio(ref_dir), list_audio(gen_dir)
    for label, files, folder in (("reference", ref, ref_dir), ("generated", gen, gen_dir)):
        if not files:
            raise PairingError(f"no audio files in the {label} folder {folder}")
    missing, extra = sorted(set(ref) - set(gen)), sorted(set(gen) - set(ref))
    if (missing or extra) and not unpaired:
        lines = [f"{gen_dir} has {len(gen)} files for {len(ref)} references; clips pair by file name (stem)."]
        if missing:
            lines.append(f"no generated file for: {', '.join(missing)}")
        if extra:
            lines.append(f"no reference for: {', '.join(extra)}")
        lines.append("Fix the names, or pass --unpaired to score the sets without the paired metrics.")
        raise PairingError("\n".join(lines))
    return ref, gen, sorted(set(ref) & set(gen)) if not unpaired else []


def load_clips(files: dict[str, Path], sr: int, label: str, invalid: dict) -> dict:
    """{stem: wav [channels, samples] at sr}; clips failing check_audio go to invalid[label/stem]."""
    clips = {}
    for stem, path in files.items():
        try:
            wav, _ = load_audio(path, sample_rate=sr)
            clips[stem] = check_audio(wav, sr, name=f"{label}/{path.name}")
        except AudioError as err:
            log.warning("leaving out %s: %s", path, err)
            invalid[f"{label}/{stem}"] = str(err)
    return clips


def aggregate(per_clip: dict[str, float | None], seed: int, n_boot: int) -> dict:
    """Bootstrap summary of one per-clip metric, with the per-clip values; {skipped} if none is defined."""
    try:
        summary = bootstrap_ci(list(per_clip.values()), seed=seed, n_resamples=n_boot).to_dict()
    except ValueError as err:
        summary = {"skipped": str(err)}
    return summary | {"per_clip": json_safe(per_clip)}


def per_clip(names: list[str], fn: Callable[[str], float | None], metric: str) -> dict[str, float | None]:
    """Apply fn to each clip; a ValueError (AudioError included) for one clip becomes None with a
    logged reason, so one bad clip does not stop the run."""
    out = {}
    for name in names:
        try:
            out[name] = fn(name)
        except ValueError as err:
            log.warning("%s undefined for %s: %s", metric, name, err)
            out[name] = None
    return out


def distribution_section(ref: dict, gen: dict, sr: int, args) -> dict:
    out = {}
    for emb_name in args.embeddings:
        try:
            emb = get_embedding(emb_name)
        except MissingCheckpoint as err:
            log.warning("%s", err)
            out[emb_name] = {"skipped": str(err)}
            continue
        log.info("embedding %d + %d clips with %s", len(ref), len(gen), emb_name)
        r = [emb.embed(w, sr) for w in ref.values()]
        g = [emb.embed(w, sr) for w in gen.values()]
        section = {}
        for metric, fn in (("fad", distribution.fad), ("fad_inf", distribution.fad_inf), ("kad", distribution.kad)):
            kwargs = {"seed": args.seed, "embedding": emb_name}
            if metric != "fad_inf":
                kwargs["n_boot"] = args.n_boot_distribution
            try:
                section[metric] = fn(r, g, **kwargs).to_dict()
            except ValueError as err:  # e.g. too few vectors for FAD-inf's subset sizes
                section[metric] = {"skipped": str(err)}
        out[emb_name] = section
    return out


def fidelity_section(ref: dict, gen: dict, pairs: list[str], sr: int, args) -> dict:
    aligned = {}
    for name in pairs:
        try:
            aligned[name] = match_length(ref[name], gen[name], sr)
        except AudioError as err:
            log.warning("fidelity undefined for %s: %s", name, err)
    out = {}
    for metric, fn in fidelity.FIDELITY_METRICS.items():
        values = per_clip(list(aligned), lambda n, fn=fn: fn(*aligned[n], sr), metric)
        values |= {n: None for n in pairs if n not in aligned}
        out[metric] = aggregate(values, args.seed, args.n_boot)
    tsr = per_clip(list(aligned), lambda n: transients.transient_smearing_ratio(*aligned[n], sr, name=n), "transient_smearing_ratio")
    out["transient_smearing_ratio"] = aggregate(tsr, args.seed, args.n_boot)
    return out


def load_annotations(path: str | Path) -> dict[str, dict]:
    """Reference truth per clip stem: {stem: {"beats": [s], "key": "Bb major", "boundaries": [s]}}.

    Reads either a JSON object keyed by stem with those fields, or a corpus manifest.jsonl from
    accelerando.data (one clip a line: "id", "beats", "key": {"name": ...}, "sections":
    [[start s, kind], ...], whose section starts are the boundaries). Missing fields are
    estimated from the reference audio.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        entries = {e["id"]: e for e in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}
    else:
        entries = json.loads(path.read_text())
    truth = {}
    for stem, e in entries.items():
        key = e.get("key")
        fields = {"beats": e.get("beats"), "key": key.get("name") if isinstance(key, dict) else key,
                  "boundaries": e.get("boundaries", [s[0] for s in e["sections"]] if "sections" in e else None)}
        truth[stem] = {k: v for k, v in fields.items() if v is not None}
    return truth


def reference_truth(ref: dict, pairs: list[str], sr: int, annotations: dict) -> dict[str, dict]:
    """Per paired stem: beats (s), key and boundaries (s) from the annotations, else estimated from
    the reference audio. An estimate that fails leaves that field empty (logged)."""
    estimators = {"beats": rhythm.estimate_beats, "key": tonal.estimate_key, "boundaries": structure.segment_boundaries}
    truth = {}
    for name in pairs:
        ann = annotations.get(name, {})
        truth[name] = {}
        for field, estimate in estimators.items():
            try:
                truth[name][field] = ann[field] if field in ann else estimate(ref[name], sr, name=name)
            except ValueError as err:
                log.warning("no reference %s for %s: %s", field, name, err)
                truth[name][field] = None
    return truth


def musical_section(ref: dict, gen: dict, pairs: list[str], sr: int, args) -> tuple[dict, dict]:
    annotations = load_annotations(args.annotations) if args.annotations else {}
    truth = reference_truth(ref, pairs, sr, annotations)
    gen_names = sorted(gen)
    values = {
        "beat_consistency": per_clip(gen_names, lambda n: rhythm.beat_consistency(gen[n], sr, name=n), "beat_consistency"),
        "key_stability": per_clip(
            gen_names, lambda n: tonal.key_stability(gen[n], sr, ref_key=truth.get(n, {}).get("key"), name=n), "key_stability"),
    }
    ref_values = {
        "beat_consistency": per_clip(pairs, lambda n: rhythm.beat_consistency(ref[n], sr, name=n), "beat_consistency"),
        "key_stability": per_clip(pairs, lambda n: tonal.key_stability(ref[n], sr, ref_key=truth[n]["key"], name=n), "key_stability"),
    }
    if pairs:
        values["beat_f_measure"] = per_clip(pairs, lambda n: rhythm.beat_f_measure(gen[n], sr, truth[n]["beats"], name=n)
                                            if truth[n]["beats"] is not None and len(truth[n]["beats"])
                                            else undefined("beat_f_measure", n, "no reference beats"), "beat_f_measure")
        values["key_score_mirex"] = per_clip(pairs, lambda n: tonal.key_score(gen[n], sr, truth[n]["key"], name=n)
                                             if truth[n]["key"] else undefined("key_score", n, "no reference key"), "key_score_mirex")
        seg = per_clip(pairs, lambda n: structure.segmentation_f(gen[n], sr, truth[n]["boundaries"], name=n)
                       if truth[n]["boundaries"] is not None else undefined("segmentation_f", n, "no reference boundaries"),
                       "segmentation_f")
        for w in structure.WINDOWS:
            values[f"segmentation_f_{w:g}s"] = {n: None if v is None else v[w] for n, v in seg.items()}
    section = {m: aggregate(v, args.seed, args.n_boot) for m, v in values.items()}
    section |= {f"{m}_reference": aggregate(v, args.seed, args.n_boot) for m, v in ref_values.items() if pairs}
    paired = {}
    for m, v in ref_values.items():
        if pairs:
            try:
                paired[f"{m}_gen_minus_ref"] = paired_comparison([values[m][n] for n in pairs], [v[n] for n in pairs],
                                                                 seed=args.seed, n_resamples=args.n_boot).to_dict()
            except ValueError as err:
                paired[f"{m}_gen_minus_ref"] = {"skipped": str(err)}
    return section, paired


def run(args) -> dict:
    ref_files, gen_files, pairs = pair_files(Path(args.ref), Path(args.gen), unpaired=args.unpaired)
    sr, invalid = args.sample_rate, {}
    ref = load_clips(ref_files, sr, "ref", invalid)
    gen = load_clips(gen_files, sr, "gen", invalid)
    if not ref or not gen:
        raise AudioError(f"no valid clips left (reference {len(ref)}, generated {len(gen)}); reasons: {invalid}")
    pairs = [n for n in pairs if n in ref and n in gen]
    result = {
        "accelerando_version": __version__,
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "out")},
        "clips": {"reference": len(ref), "generated": len(gen), "pairs": len(pairs)},
        "invalid": invalid,
        "distribution": distribution_section(ref, gen, sr, args),
    }
    if pairs:
        result["fidelity"] = fidelity_section(ref, gen, pairs, sr, args)
    if not args.no_musical:
        result["musical"], result["paired"] = musical_section(ref, gen, pairs, sr, args)
    return json_safe(result)


def _print_table(result: dict) -> None:
    def fmt(x) -> str:
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    def row(name: str, m: dict) -> None:
        if "skipped" in m:
            print(f"  {name:<32} skipped: {m['skipped'].splitlines()[0]}")
        elif "value" in m:
            ci = "" if m.get("ci_low") is None else f"[{fmt(m['ci_low'])}, {fmt(m['ci_high'])}]"
            print(f"  {name:<32} {fmt(m['value']):>10}  {ci:<24} n={m['n']}")
    for emb, section in result["distribution"].items():
        print(f"distribution ({emb})")
        for name, m in (section.items() if "skipped" not in section else [("all", section)]):
            row(name, m)
    for key in ("fidelity", "musical"):
        if key in result:
            print(key)
            for name, m in result[key].items():
                row(name, m)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accelerando.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="folder of reference clips")
    parser.add_argument("--gen", required=True, help="folder of generated clips (same file names)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--sample-rate", type=int, default=44100, help="every clip is resampled to this rate (Hz)")
    parser.add_argument("--embeddings", nargs="+", default=["mel-stats", "crepe-tiny"],
                        help="embeddings for FAD/KAD (registered: mel-stats, crepe-tiny, crepe-full, vggish, clap, encodec)")
    parser.add_argument("--annotations", help="reference truth: JSON {stem: {beats, key, boundaries}} or a corpus manifest.jsonl")
    parser.add_argument("--unpaired", action="store_true", help="allow unmatched names; skip paired metrics")
    parser.add_argument("--no-musical", action="store_true", help="skip the per-clip musical metrics")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for per-clip metrics")
    parser.add_argument("--n-boot-distribution", type=int, default=200, help="bootstrap resamples for FAD and KAD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads (1: on a shared machine a second thread stalls small eigendecompositions)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(levelname)s: %(message)s")
    set_threads(args.threads)
    try:
        with threadpool_limits(args.threads):
            result = run(args)
    except (PairingError, AudioError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

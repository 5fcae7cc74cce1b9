"""`python -m accelerando.models generate ...`: text to audio from the command line.

    python -m accelerando.models generate --model stable-audio-lite \\
        --prompt "a chorale in D major for brass at 90 BPM" --seconds 8 --out x.wav
    python -m accelerando.models generate --model stable-audio --preset full --steps 1 --seconds 1 --out y.wav
    python -m accelerando.models generate --model stable-audio --weights /data/stable-audio-open-1.0 ...

`stable-audio-lite` loads the committed checkpoints (or --weights DIR --autoencoder DIR);
`stable-audio` builds Stable Audio Open at --preset size with random weights (its output is
noise: it exists to time the real architecture) or loads a local copy with --weights. Both go
through the same `StableAudioPipeline` call (`stable_audio_lite.generate`).

    python -m accelerando.models generate --model musicgen-lite-b --prompt "..." \\
        --audio-prompt clip.wav --seconds 8 --out y.wav [--guidance-scale 3] [--rerank 4]

`musicgen-lite-a` / `-b` load the committed MusicGen-Lite token models and Codec-Lite. Model B
attends to the audio prompt (its last 4 s); model A continues it. --rerank N keeps the best of N
candidates by CLAP-Lite score. `--model musicgen-lite-a --weights checkpoints/musicgen_lite_a_flatten`
runs model A trained with the flattened codebook pattern.

    python -m accelerando.models generate --model lact-music --prompt "..." --seconds 60 --out z.wav

`lact-music` loads the committed LaCT-Music token model (or --weights DIR: a matched baseline) and
generates any length in constant memory (MusicGen-Lite's sampling flags; text only).

    python -m accelerando.models transcribe --model lact-asr clip.wav [--beam 8 --lm-from DIR]

`lact-asr` loads the committed LaCT-ASR recogniser (or --weights DIR: a matched baseline, or one
you trained); the audio is downmixed and resampled to 16 kHz. Greedy CTC decoding by default;
--beam N runs prefix beam search, with a character 4-gram of a speech corpus's training
transcripts when --lm-from names the corpus directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..audio import save_audio
from ..machine import set_threads


def build_pipeline(args):
    if args.model == "stable-audio-lite":
        from .stable_audio_lite import DIT_CHECKPOINT, VAE_CHECKPOINT, load_stable_audio_lite

        return load_stable_audio_lite(args.weights or DIT_CHECKPOINT, args.autoencoder or VAE_CHECKPOINT)
    from .stable_audio import build_stable_audio

    if args.weights is None:
        print(f"stable-audio {args.preset}: random weights (the audio is noise; pass --weights DIR for a local "
              f"copy of {'stabilityai/stable-audio-open-1.0'})", file=sys.stderr)
    return build_stable_audio(args.preset, weights=args.weights)


# Flags of one model family, with their defaults; given to the other family they are an error,
# not silently ignored.
MODEL_FLAGS = {
    "musicgen-lite": {"audio_prompt": None, "rerank": 1, "temperature": 1.0, "top_k": 250, "guidance_scale": 3.0},
    "stable-audio": {"steps": 50, "preset": "full", "autoencoder": None, "guidance_scale": 6.0},
}


def token_model(name: str) -> bool:
    """Is `name` a token language model (MusicGen-Lite's family) rather than a diffusion model?"""
    return name.startswith("musicgen-lite") or name == "lact-music"


def resolve_model_flags(args) -> None:
    """Refuse the other family's flags, then fill this family's defaults into `args`."""
    family = "musicgen-lite" if token_model(args.model) else "stable-audio"
    other = next(f for f in MODEL_FLAGS if f != family)
    wrong = [f for f in MODEL_FLAGS[other] if f not in MODEL_FLAGS[family] and getattr(args, f) is not None]
    if wrong:
        flags = ", ".join("--" + f.replace("_", "-") for f in wrong)
        raise SystemExit(f"error: {flags} {'is an option' if len(wrong) == 1 else 'are options'} of {other} models; "
                         f"--model {args.model} takes none of them")
    for flag, default in MODEL_FLAGS[family].items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)


def token_model_command(args) -> dict:
    from ..audio import AudioError, load_audio
    from .musicgen_lite import MusicGenLitePipeline

    t0 = time.perf_counter()
    try:
        if args.model == "lact-music":
            from .lact_music import LaCTMusicPipeline

            pipe = LaCTMusicPipeline.from_pretrained(args.weights)
        else:
            pipe = MusicGenLitePipeline.from_pretrained(args.model[-1], path=args.weights)
        prompt = load_audio(args.audio_prompt) if args.audio_prompt else (None, None)
    except (FileNotFoundError, ValueError, AudioError) as err:
        raise SystemExit(f"error: {err}") from None
    t1 = time.perf_counter()
    guidance = args.guidance_scale
    try:
        audio, info = pipe([args.prompt], seconds=args.seconds, audio_prompt=prompt[0], audio_prompt_sr=prompt[1],
                           guidance=guidance, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                           rerank=args.rerank, controls=None if args.no_controls else "caption")
    except (ValueError, AudioError) as err:
        raise SystemExit(f"error: {err}") from None
    t2 = time.perf_counter()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_audio(args.out, audio[0], pipe.sample_rate)
    record = {"out": args.out, "model": args.model, "seconds": args.seconds, "sample_rate": pipe.sample_rate,
              "audio_prompt": args.audio_prompt, "guidance_scale": guidance, "rerank": args.rerank, "seed": args.seed,
              "load_s": round(t1 - t0, 2), "generate_s": round(t2 - t1, 2),
              "tokens_per_second": round(info["stats"]["tokens_per_second"], 1),
              "clap_candidates": info.get("clap_candidates"), "threads": torch.get_num_threads(),
              "controls": bool(pipe.model.config.control_channels and not args.no_controls)}
    print(json.dumps(record))
    return record


def generate_command(args) -> dict:
    from .stable_audio_lite import generate

    if not args.out.lower().endswith((".wav", ".flac")):
        raise SystemExit(f"--out {args.out}: give a .wav or .flac path")
    set_threads(args.threads)
    resolve_model_flags(args)
    if token_model(args.model):
        return token_model_command(args)
    t0 = time.perf_counter()
    try:
        pipe = build_pipeline(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    pipe.set_progress_bar_config(disable=True)
    t1 = time.perf_counter()
    try:
        audio, sr = generate(pipe, args.prompt, seconds=args.seconds, steps=args.steps,
                             guidance_scale=args.guidance_scale, seed=args.seed,
                             controls=None if args.no_controls else "caption")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    t2 = time.perf_counter()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_audio(args.out, audio[0], sr)  # [channels, samples]
    record = {"out": args.out, "model": args.model, "seconds": args.seconds, "sample_rate": sr, "steps": args.steps,
              "guidance_scale": args.guidance_scale, "seed": args.seed, "load_s": round(t1 - t0, 2),
              "generate_s": round(t2 - t1, 2), "threads": torch.get_num_threads(),
              "controls": bool(getattr(pipe, "control_adapter", None) is not None and not args.no_controls)}
    print(json.dumps(record))
    return record


LACT_ASR_CHECKPOINT = "checkpoints/lact_asr"


def transcribe_command(args) -> dict:
    from ..audio import AudioError, load_audio
    from .lact_asr import SAMPLE_RATE, CharNGram, load_lact_asr, transcribe

    set_threads(args.threads)
    try:
        model = load_lact_asr(args.weights or LACT_ASR_CHECKPOINT)
        lm = None
        if args.lm_from:
            from ..data import SpeechCorpus

            lm = CharNGram([u.transcript for u in SpeechCorpus(args.lm_from).filter(split="train")])
        results = []
        for path in args.audio:
            wav, _ = load_audio(path, sample_rate=SAMPLE_RATE, channels=1)
            t0 = time.perf_counter()
            text = transcribe(model, wav[0], SAMPLE_RATE, width=args.beam, lm=lm)
            results.append({"audio": path, "text": text, "seconds": round(wav.shape[-1] / SAMPLE_RATE, 2),
                            "transcribe_s": round(time.perf_counter() - t0, 3)})
    except (FileNotFoundError, ValueError, AudioError) as err:
        raise SystemExit(f"error: {err}") from None
    for r in results:
        print(r["text"] if not args.json else json.dumps(r))
    return {"model": args.model, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m accelerando.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text to audio")
    g.add_argument("--model", choices=("stable-audio-lite", "stable-audio", "musicgen-lite-a", "musicgen-lite-b",
                                       "lact-music"), default="stable-audio-lite")
    g.add_argument("--preset", choices=("full", "small", "tiny"), default=None, help="stable-audio size (random weights; default full)")
    g.add_argument("--weights", default=None,
                   help="checkpoint directory (Lite DiT, MusicGen-Lite, LaCT-Music or a local Stable Audio Open copy)")
    g.add_argument("--autoencoder", default=None, help="Lite autoencoder directory (default: the committed one)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--seconds", type=float, default=8.0)
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default 50)")
    g.add_argument("--guidance-scale", type=float, default=None, help="CFG weight (default 6 diffusion, 3 MusicGen-Lite)")
    g.add_argument("--audio-prompt", default=None, help="MusicGen-Lite: an audio file to prompt with (B) or continue (A)")
    g.add_argument("--rerank", type=int, default=None, help="MusicGen-Lite: best of N candidates by CLAP-Lite score (default 1)")
    g.add_argument("--temperature", type=float, default=None, help="MusicGen-Lite sampling temperature (default 1)")
    g.add_argument("--top-k", type=int, default=None, help="MusicGen-Lite top-k sampling (0: off; default 250)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-controls", action="store_true",
                   help="ignore the tempo, metre and key the prompt states (models trained with musical controls "
                        "follow them by default; others always ignore them)")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--out", required=True, help=".wav or .flac")
    t = sub.add_parser("transcribe", help="speech to text")
    t.add_argument("audio", nargs="+", help="audio files (any rate; downmixed and resampled to 16 kHz)")
    t.add_argument("--model", choices=("lact-asr",), default="lact-asr")
    t.add_argument("--weights", default=None, help=f"recogniser directory (default {LACT_ASR_CHECKPOINT})")
    t.add_argument("--beam", type=int, default=1, help="prefix beam width (1: greedy)")
    t.add_argument("--lm-from", default=None, help="a speech corpus directory whose training transcripts give a "
                                                   "character 4-gram for the beam search")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--json", action="store_true", help="one JSON object per file (text, seconds, time)")
    args = parser.parse_args(argv)
    if args.command == "transcribe":
        transcribe_command(args)
    else:
        generate_command(args)


if __name__ == "__main__":
    main()

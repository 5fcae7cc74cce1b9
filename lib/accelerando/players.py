"""Audio players for chapters: small Ogg Vorbis files next to the run's records, referenced by path.

A notebook output that embeds audio as base64 grows by ~1.3 MB per 10 s of float WAV and bloats
the committed results record; here each sample is written once as a ~50 kB .ogg file and the
notebook holds only an `<audio>` element pointing at it. For the book's own runs the files land
in book/audio/<chapter>/, which `python -m accelerando.book build` copies beside the HTML.

    audio_player(wav, sr, "brass_chorale", chapter="03_lite_models", caption="a chorale ...")
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import torch

from .audio import check_audio, save_audio
from .record import DEFAULT_RECORD_DIR, RECORD_DIR_ENV

NOTEBOOK_DIR_ENV = "ACCELERANDO_NOTEBOOK_DIR"  # set by the chapter runner: where the notebook is written


def audio_dir(chapter: str) -> Path:
    """Folder for `chapter`'s audio: <record dir>/../audio/<chapter> (book/audio/<chapter> for the book)."""
    records = Path(os.environ.get(RECORD_DIR_ENV, DEFAULT_RECORD_DIR))
    return records.parent / "audio" / chapter


def audio_player(wav: torch.Tensor | np.ndarray, sr: int, name: str, chapter: str, caption: str | None = None):
    """Write `wav` [channels, samples] (or [samples]) at `sr` Hz as <audio_dir>/<name>.ogg and
    return an IPython HTML player that references it by a path relative to the notebook."""
    from IPython.display import HTML

    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError(f"audio name {name!r}: use a plain file stem without spaces or slashes")
    wav = check_audio(torch.as_tensor(np.asarray(wav, dtype=np.float32)), sr, name=name)
    peak = float(wav.abs().max())
    if peak > 1.0:  # Vorbis would clip: scale down and say so in the caption
        wav = wav / peak
        caption = f"{caption or name} (scaled by 1/{peak:.2f} to avoid clipping)"
    path = save_audio(audio_dir(chapter) / f"{name}.ogg", wav, sr)
    start = Path(os.environ.get(NOTEBOOK_DIR_ENV, os.getcwd()))
    src = Path(os.path.relpath(path, start)).as_posix()
    label = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return HTML(f'<figure class="accelerando-audio">{label}<audio controls preload="none" src="{html.escape(src)}"></audio></figure>')

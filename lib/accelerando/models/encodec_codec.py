"""EnCodec as a MusicGen-Lite tokenizer: transformers' `EncodecModel` behind Codec-Lite's interface.

MusicGen tokenizes audio with EnCodec 32 kHz (Defossez et al. 2022, arXiv:2210.13438; Copet et al.
2023): a convolutional autoencoder whose 50 frames/s latents a residual vector quantizer turns
into 4 parallel streams of 2048-entry codes (2.2 kbit/s = 4 x 11 bits x 50 frames/s). The number
of codebooks follows from the bandwidth: K = floor(bandwidth / (log2(size) x frame rate)).

    codec = EncodecTokenizer.from_pretrained("/data/encodec_32khz")   # a local copy, real weights
    codec = EncodecTokenizer.from_config(ENCODEC_32KHZ)               # random weights: shapes, speed
    codes = codec.encode(wav)          # [B, 1, samples] at 32 kHz -> [B, 4, ceil(samples / 640)] int64
    wav_hat = codec.decode(codes)      # -> [B, 1, frames x 640]

Any `TokenCodec` (`codec_lite`) drives `MusicGenLitePipeline`. Only random weights exist on this
machine: their codes and audio measure shapes and speed, never quality. No weights are downloaded;
`from_pretrained` reads a directory written by `EncodecModel.save_pretrained` (e.g. a download of
facebook/encodec_32khz made elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import EncodecConfig, EncodecModel

from .codec_lite import token_bitrate
from .common import check_local_weights, seeded_build
from .musicgen import AUDIO_ENCODER_CONFIGS

# facebook/encodec_32khz's config, the one musicgen.py builds MusicGen's audio encoder from.
ENCODEC_32KHZ = AUDIO_ENCODER_CONFIGS["small"]
REPO_ID = "facebook/encodec_32khz"
# Tests: a few channels wide, 2 codebooks of 16 at 50 frames/s (0.4 kbit/s), the token geometry
# of musicgen_lite.TINY_CONFIG.
ENCODEC_TINY_CONFIG = {**AUDIO_ENCODER_CONFIGS["tiny"], "codebook_size": 16, "target_bandwidths": [0.4]}
LOCAL_LAYOUT = {"": ["config.json", "*.safetensors|*.bin"]}


class EncodecTokenizer:
    """Audio <-> EnCodec RVQ codes [B, K, frames] at one bandwidth (K codebooks)."""

    def __init__(self, model: EncodecModel, bandwidth: float | None = None, weights_sha256: str | None = None):
        cfg = model.config
        if cfg.chunk_length_s is not None or cfg.normalize:
            # the 48 kHz model encodes overlapping chunks, each with a loudness scale the codes do
            # not carry: a token LM's codes alone could not be decoded
            raise ValueError("this EnCodec encodes in normalized chunks (the 48 kHz model); its codes alone do not "
                             "decode: use encodec_24khz or encodec_32khz")
        bandwidth = cfg.target_bandwidths[0] if bandwidth is None else bandwidth
        if bandwidth not in cfg.target_bandwidths:
            raise ValueError(f"bandwidth {bandwidth} kbit/s: this EnCodec offers {cfg.target_bandwidths}")
        self.model, self.bandwidth = model.eval(), bandwidth
        self.weights_sha256 = weights_sha256  # of the file it was loaded from; None: random weights

    @classmethod
    def from_config(cls, config: EncodecConfig | dict = ENCODEC_32KHZ, bandwidth: float | None = None,
                    seed: int = 0) -> EncodecTokenizer:
        """Random weights drawn with `seed`: for shapes, speed and tests, not for listening."""
        config = config if isinstance(config, EncodecConfig) else EncodecConfig(**config)
        with seeded_build(seed, "cpu"):
            model = EncodecModel(config)
        return cls(model, bandwidth)

    @classmethod
    def from_pretrained(cls, path: str | Path, bandwidth: float | None = None) -> EncodecTokenizer:
        """Real weights from a local directory (config.json + model.safetensors, as
        `EncodecModel.save_pretrained` writes and the hub repository holds); never downloads."""
        from ..checkpoint import file_sha256

        root = check_local_weights(path, LOCAL_LAYOUT, REPO_ID)
        model = EncodecModel.from_pretrained(root, local_files_only=True)
        weights = sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
        # the fingerprint MusicGen-Lite checkpoints store: the weights file's SHA-256
        sha = file_sha256(weights[0]) if len(weights) == 1 else ",".join(file_sha256(p) for p in weights)
        return cls(model.float(), bandwidth, weights_sha256=sha)

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    @property
    def channels(self) -> int:
        return int(self.model.config.audio_channels)

    @property
    def hop_length(self) -> int:
        """Samples per code frame (the product of the encoder's strides)."""
        return int(self.model.config.hop_length)

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.codebook_size)

    @property
    def bitrate(self) -> float:
        return token_bitrate(self.frame_rate, self.num_codebooks, self.codebook_size)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        """Audio [B, channels, samples] at `sample_rate` (`sr`, if given, is checked against it)
        -> codes [B, K, ceil(samples / hop_length)] int64."""
        from ..audio import check_audio

        if wav.ndim != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"audio of shape {tuple(wav.shape)}: expected [batch, {self.channels}, samples] at "
                             f"{self.sample_rate} Hz")
        for i, w in enumerate(wav):  # NaN, silence, integer PCM, the sample rate: errors that name the fix
            check_audio(w, self.sample_rate if sr is None else sr, name=f"EnCodec input {i}",
                        expected_sr=self.sample_rate)
        out = self.model.encode(wav.float(), bandwidth=self.bandwidth)
        return out.audio_codes[0]  # [1 chunk, B, K, T] -> [B, K, T]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, k, frames] (the first k <= K codebooks) -> audio [B, channels, frames x hop_length]."""
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= self.num_codebooks or codes.is_floating_point():
            raise ValueError(f"codes of shape {tuple(codes.shape)}, dtype {codes.dtype}: expected integer codes "
                             f"[batch, <= {self.num_codebooks}, frames]")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes outside [0, {self.codebook_size}): these are not this codec's tokens")
        return self.model.decode(codes.long()[None], [None]).audio_values

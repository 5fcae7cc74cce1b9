"""How audio survives a token codec: fidelity and notes kept, a row per number of codebooks.

Works for any `models.codec_lite.TokenCodec` (Codec-Lite over the Lite autoencoder's latents, or
EnCodec from a local checkpoint).
"""

from __future__ import annotations

import torch

from ..models.codec_lite import LatentCodec, TokenCodec, token_bitrate
from .adherence import chroma_correlation
from .fidelity import mrstft_distance, si_sdr


@torch.no_grad()
def codec_reconstruction(codec: TokenCodec, wav: torch.Tensor, latents: torch.Tensor | None = None) -> list[dict]:
    """How one clip survives the codec, a row per stage: MR-STFT distance, SI-SDR (dB) and chroma
    correlation (whether the notes survive; None for a flat chroma) of the decoded audio against
    the clip, with 1..K codebooks (the codes' bitrate in bit/s beside).

    wav [channels, samples] at codec.sample_rate. For Codec-Lite the first row is the
    autoencoder's own round trip (no quantizer: the ceiling of any quantizer of its latents) and
    each stage also gives the latent error relative to the latents' energy; `latents`
    [dim, frames] are the clip's cached latents (of its first frames x hop samples), else encoded."""
    wav = wav.float()
    decoded = []  # (row fields, audio [channels, samples])
    if isinstance(codec, LatentCodec):
        z = codec.latents(wav[None]) if latents is None else latents[None].float()
        codes = codec.rvq.encode(z)
        decoded.append(({"stage": "autoencoder", "codebooks": 0}, codec.vae.decode(z).sample[0]))
        for k in range(1, codec.num_codebooks + 1):
            z_hat = codec.rvq.decode(codes[:, :k])
            decoded.append(({"codebooks": k, "latent_rel_err": float(((z_hat - z) ** 2).sum() / (z**2).sum())},
                            codec.vae.decode(z_hat).sample[0]))
    else:
        codes = codec.encode(wav[None])
        decoded += [({"codebooks": k}, codec.decode(codes[:, :k])[0]) for k in range(1, codec.num_codebooks + 1)]
    n = min(wav.shape[-1], decoded[0][1].shape[-1])
    ref = wav[:, :n].numpy()
    rows = []
    for fields, out in decoded:
        k = fields["codebooks"]
        out = out[:, :n].numpy()
        rows.append({"stage": f"{k} codebook{'s' if k > 1 else ''}", "codebooks": k,
                     "bitrate": token_bitrate(codec.frame_rate, k, codec.codebook_size) if k else None,
                     **fields, "mrstft": mrstft_distance(ref, out, codec.sample_rate),
                     "si_sdr": si_sdr(ref, out, codec.sample_rate),
                     "chroma": chroma_correlation(torch.from_numpy(ref), torch.from_numpy(out), codec.sample_rate)})
    return rows

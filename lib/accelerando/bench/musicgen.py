"""Measurements of the MusicGen-Lite token models (Chapter 6): likelihood of held-out tokens under
each way of conditioning, and whether an audio prompt's tempo carries into the continuation.

    nll = conditioned_nll(model_a, model_b, test, prompt_frames=65)    # {condition: [clips, K]}
    agree = tempo_agreement(prompt_bpms, generated_wavs, sr)           # per clip, octave-aware

An audio prompt of a few seconds is too short for a beat tracker, so a prompt's tempo is the one
its clip's score states (the corpus knows it), not an estimate.

Decoding speed with and without the KV cache is `bench.measure.compare` over
`MusicGenLitePipeline(..., use_cache=True / False)` calls.

`test` is a token split as `train.musicgen_lite.token_data` builds it: codes [N, K, T], caption
states [N, L, 384] and masks [N, L].
"""

from __future__ import annotations

import numpy as np

from ..models.musicgen_lite import MusicGenLite, null_condition
# token_nll scores a model; it lives with the trainer that validates with it (train < bench), and
# chapters and tests import it from here too
from ..train.musicgen_lite import token_nll


def conditioned_nll(model_a: MusicGenLite, model_b: MusicGenLite, test: dict, prompt_frames: int,
                    batch: int = 16) -> dict[str, np.ndarray]:
    """The same held-out tokens (each test clip after its first `prompt_frames` frames) under
    every conditioning the two models offer, {condition: [clips, K] NLL}:

        A, text only            the continuation scored as if it started a clip
        A, text + prompt        the clip's opening read first (MusicGen's audio-prompt mode)
        B, text only            the audio prompt dropped (as in condition dropout)
        B, text + prompt        the opening in the cross-attention memory
        B, text + other prompt  another clip's opening: what the prompt's *content* is worth
        B, prompt only          the null text, the opening as memory
    """
    codes, states, mask = test["codes"], test["states"], test["mask"]
    if not 0 < prompt_frames < codes.shape[-1]:
        raise ValueError(f"prompt_frames={prompt_frames} of {codes.shape[-1]}-frame clips: leave both parts non-empty")
    prompt, target = codes[..., :prompt_frames], codes[..., prompt_frames:]
    other = prompt.roll(1, dims=0)  # clip i gets clip i-1's opening
    null_states, null_mask = null_condition(states.float(), mask)
    rows = {
        "A, text only": token_nll(model_a, target, states, mask, batch=batch),
        "A, text + prompt": token_nll(model_a, target, states, mask, context=prompt, batch=batch),
        "B, text only": token_nll(model_b, target, states, mask, batch=batch),
        "B, text + prompt": token_nll(model_b, target, states, mask, prompt_codes=prompt, batch=batch),
        "B, text + other prompt": token_nll(model_b, target, states, mask, prompt_codes=other, batch=batch),
        "B, prompt only": token_nll(model_b, target, null_states, null_mask, prompt_codes=prompt, batch=batch),
    }
    return {k: v.numpy() for k, v in rows.items()}


def tempo_agreement(reference_bpms, generated_wavs, sr: int) -> list[dict]:
    """Per clip: the beat tracker's tempo of generated_wavs[i] against reference_bpms[i] (a tempo
    a score states, BPM), their ratio, and whether they agree within 4% (acc1) or up to a factor
    2 or 3 (acc2, the octave errors a beat tracker makes), as MIREX scores tempo. A clip too short
    or too sparse for the tracker gets None."""
    from ..metrics.adherence import estimate_tempo, tempo_accuracy

    rows = []
    for i, (ref, wav) in enumerate(zip(reference_bpms, generated_wavs)):
        est = estimate_tempo(wav, sr, name=f"clip {i}")
        acc1, acc2 = tempo_accuracy(est, ref) if est and ref else (None, None)
        rows.append({"reference_bpm": ref, "generated_bpm": est, "ratio": est / ref if est and ref else None,
                     "acc1": acc1, "acc2": acc2})
    return rows

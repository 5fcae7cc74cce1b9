"""WP1 measurement: does QAT of the low-rank branches recover fidelity beyond PTQ?

`qat_fidelity(pipe, calib_prompts, eval_prompts, data, objectives)` quantizes a copy of the
pipeline's transformer once (post-training, as `bench.quant.fidelity_to_full_precision` does:
the same calibration run and the same evaluation renders), then from that same PTQ start fine-tunes
the low-rank branches with each objective (`accelerando.train.qat`), and scores every clip
against its full-precision twin from the same noise. Records, one per method and prompt: method
("ptq" or "qat-<objective>"), prompt, mrstft, complex_mrstft, si_sdr, lsd, and the QAT's steps,
seconds, clips seen, first and last losses and its held-out loss before and after.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from functools import partial

import numpy as np

from ..quant import SVDQuantConfig, quantize_
from ..quant.objectives import pipeline_calibration
from ..train.qat import QATData, QATTrainingConfig, finetune_lowrank_
from .quant import fidelity_scores, render_all


def qat_fidelity(pipe, config: SVDQuantConfig, calib_prompts: list[str], eval_prompts: list[str], data: QATData,
                 objectives: tuple[str, ...] = ("latent_mse", "stft_complex"), qat: QATTrainingConfig | None = None,
                 val_data: QATData | None = None, *, steps: int = 25, seconds: float = 4.0, calib_steps: int = 8,
                 calib_seconds: float = 2.0, guidance_scale: float = 6.0, batch_size: int = 8, seed: int = 0,
                 log_fn=None) -> Iterator[dict]:
    """Per method (PTQ, then QAT with each objective from the same PTQ start) and evaluation
    prompt, one record of fidelity to the full-precision output. `qat` gives the QAT settings
    (its objective is replaced by each of `objectives`); `data` the training clips (train split),
    `val_data` held-out clips for the QAT's own loss. The pipeline's transformer is restored."""
    qat = qat or QATTrainingConfig()

    render_eval = partial(render_all, pipe, seconds=seconds, steps=steps, guidance_scale=guidance_scale,
                          batch_size=batch_size, seed=seed)  # as fidelity_to_full_precision renders

    original = pipe.transformer
    reference, sr = render_eval(eval_prompts)
    try:
        ptq = copy.deepcopy(original)
        pipe.transformer = ptq
        calib, audio_fn = pipeline_calibration(pipe, calib_prompts, steps=calib_steps, seconds=calib_seconds,
                                               guidance_scale=guidance_scale, seed=seed + 10_000)
        start = time.perf_counter()
        quantize_(ptq, config, calib=calib, audio_fn=audio_fn)
        runs = [("ptq", ptq, {"quantize_seconds": time.perf_counter() - start})]
        for objective in objectives:
            student = copy.deepcopy(ptq)
            pipe.transformer = student
            report = finetune_lowrank_(pipe, QATTrainingConfig(**{**qat.to_dict(), "objective": objective}), data, original,
                                       val_data=val_data, log_fn=log_fn)
            runs.append((f"qat-{objective}", student, {
                "qat_steps": len(report.steps), "qat_seconds": report.seconds, "clips_seen": report.clips_seen,
                "loss_first": report.losses[0], "loss_last": float(np.mean(report.losses[-10:])),
                "val_before": report.val_before, "val_after": report.val_after, "losses": report.losses}))
        rendered = []
        for method, dit, info in runs:
            pipe.transformer = dit
            rendered.append((method, render_eval(eval_prompts)[0], info))
    finally:
        pipe.transformer = original
    for method, audio, info in rendered:
        for i, (ref, gen) in enumerate(zip(reference.numpy(), audio.numpy())):
            yield {"method": method, "prompt": i, **fidelity_scores(ref, gen, sr), **info}

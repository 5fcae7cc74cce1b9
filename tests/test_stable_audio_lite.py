"""Stable-Audio-Lite: the training objective is the scheduler's, conditioning is the pipeline's,
a few training steps lower the loss, checkpoints round-trip, bad input fails clearly, and the
committed checkpoints generate audio.

Everything but the last test runs on the tiny configs (the tiny autoencoder, DIT_TINY_CONFIG).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite, save_autoencoder_lite
from accelerando.models.stable_audio import build_stable_audio
from accelerando.models.stable_audio_lite import (
    CONFIG_FILE,
    DIT_CHECKPOINT,
    VAE_CHECKPOINT,
    diffusion_target,
    generate,
    load_stable_audio_lite,
    save_stable_audio_lite,
    scheduler_config,
)
from accelerando.models.stable_audio_conditioning import conditioning, max_seconds, text_states


def test_target_inverts_the_schedulers_preconditioning(tiny_lite_pipe):
    """A model that outputs the training target makes the scheduler's denoised estimate exact."""
    sched = tiny_lite_pipe.scheduler
    sigma_data = sched.config.sigma_data
    x0, noise = torch.randn(3, 4, 16) * sigma_data, torch.randn(3, 4, 16)
    sigma = torch.tensor([0.3, 2.0, 80.0])
    model_input, timestep, target = diffusion_target(x0, noise, sigma, sigma_data)
    for i in range(3):
        x = x0[i] + sigma[i] * noise[i]
        assert torch.allclose(sched.precondition_inputs(x, sigma[i]), model_input[i], atol=1e-6)
        assert torch.allclose(sched.precondition_noise(sigma[i : i + 1]), timestep[i : i + 1])
        denoised = sched.precondition_outputs(x, target[i], sigma[i])
        assert torch.allclose(denoised, x0[i], atol=1e-4 * max(1.0, float(sigma[i])))


@pytest.mark.parametrize("sigma_data", [0.0536, 0.135 / 0.3, 0.6234, 0.756, 1.0, 1.37])
def test_scaled_noise_range_samples_at_any_step_count(sigma_data):
    # torchsde's Brownian tree recursed forever on some scaled ranges (CI failed at one that a
    # freshly trained tiny autoencoder happened to give); every step count must run to the end.
    from diffusers import CosineDPMSolverMultistepScheduler

    config = scheduler_config(sigma_data)
    assert config["sigma_min"] == pytest.approx(0.3 * sigma_data, abs=1e-4)
    assert config["sigma_max"] == pytest.approx(500 * sigma_data, abs=1e-3)
    scheduler = CosineDPMSolverMultistepScheduler(**config)
    for steps in (1, 2, 3, 8, 50):
        scheduler.set_timesteps(steps)
        x = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            x = scheduler.step(-x, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        assert torch.isfinite(x).all()


def test_conditioning_matches_the_pipeline(tiny_lite_pipe):
    prompts = ["a chorale in D major for brass at 90 BPM", "organ"]
    states, mask = text_states(tiny_lite_pipe, prompts)
    start, end = torch.zeros(2), torch.tensor([0.5, 0.7])
    cross, glob = conditioning(tiny_lite_pipe, states, mask, start, end)
    with torch.no_grad():
        ref_text = tiny_lite_pipe.encode_prompt(prompts, torch.device("cpu"), False)
        ref_start, ref_end = tiny_lite_pipe.encode_duration(0.0, [0.5, 0.7], torch.device("cpu"), False, 2)
    assert torch.allclose(cross, torch.cat([ref_text, ref_start, ref_end], dim=1), atol=1e-6)
    assert torch.allclose(glob, torch.cat([ref_start, ref_end], dim=2), atol=1e-6)
    dropped, _ = conditioning(tiny_lite_pipe, states, mask, start, end, drop=torch.tensor([True, False]))
    assert dropped[0].abs().sum() == 0 and torch.equal(dropped[1], cross[1])  # the pipeline's uncond input


def test_generate_shapes_seed_and_bad_input(tiny_lite_pipe):
    longest = max_seconds(tiny_lite_pipe)
    audio, sr = generate(tiny_lite_pipe, "a chorale in D major", seconds=0.5, steps=3, seed=1)
    again, _ = generate(tiny_lite_pipe, "a chorale in D major", seconds=0.5, steps=3, seed=1)
    assert sr == 22050 and audio.shape == (1, 1, int(0.5 * 22050)) and np.isfinite(audio).all()
    assert np.array_equal(audio, again)
    for kwargs, match in [
        (dict(prompt="", seconds=0.5), "empty"),
        (dict(prompt="x " * 80, seconds=0.5), "word pieces"),
        (dict(prompt="music", seconds=longest + 1), "up to"),
        (dict(prompt="music", seconds=0.0), "up to"),
        (dict(prompt="music", seconds=0.5, steps=0), "at least 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate(tiny_lite_pipe, **kwargs)


def test_full_size_architecture_runs_through_the_same_call():
    pipe = build_stable_audio("tiny")  # Stable Audio Open's classes and conditioning, random weights
    audio, sr = generate(pipe, "a chorale", seconds=1.0, steps=1)
    assert sr == 44100 and audio.shape == (1, 2, 44100)


def test_training_lowers_the_loss_and_checkpoint_round_trips(tmp_path, tiny_corpus):
    from accelerando.train.dit import DiTTrainingConfig, train

    cfg = DiTTrainingConfig(model="tiny", out=str(tmp_path / "dit"), max_steps=40, batch_size=4, val_every=20,
                      warmup_steps=5, lr=3e-3, threads=1)
    log = train(cfg, corpus=tiny_corpus, log_fn=lambda *a: None)
    assert log["val"][-1]["raw"] < 0.7 * log["val"][0]["raw"]
    assert log["throughput"]["steps"] == 40
    pipe = load_stable_audio_lite(tmp_path / "dit", tmp_path / "dit" / "autoencoder_tiny")
    audio, _ = generate(pipe, "a folk song", seconds=0.5, steps=2)
    assert np.isfinite(audio).all()

    # another autoencoder than the one the DiT was trained on
    other = tmp_path / "other_vae"
    save_autoencoder_lite(build_autoencoder_lite(AUTOENCODER_TINY_CONFIG, seed=5), other)
    with pytest.raises(ValueError, match="another autoencoder"):
        load_stable_audio_lite(tmp_path / "dit", other)
    with pytest.raises(FileNotFoundError, match="accelerando.train.dit"):
        load_stable_audio_lite(tmp_path / "missing", other)
    meta = json.loads((tmp_path / "dit" / CONFIG_FILE).read_text())
    (tmp_path / "dit" / CONFIG_FILE).write_text(json.dumps({**meta, "class": "Other"}))
    with pytest.raises(ValueError, match="StableAudioLite"):
        load_stable_audio_lite(tmp_path / "dit", tmp_path / "dit" / "autoencoder_tiny")


def test_save_refuses_nothing_silently(tmp_path, tiny_lite_pipe):
    vae_dir = save_autoencoder_lite(tiny_lite_pipe.vae, tmp_path / "vae")
    save_stable_audio_lite(tiny_lite_pipe, tmp_path / "dit", vae_dir)
    loaded = load_stable_audio_lite(tmp_path / "dit", vae_dir)
    for (name, p), (_, q) in zip(tiny_lite_pipe.transformer.state_dict().items(), loaded.transformer.state_dict().items()):
        assert torch.equal(p.half().float(), q), name  # fp16 storage
    assert loaded.scheduler.config.sigma_data == pytest.approx(0.7)
    assert loaded.scheduler.config.sigma_min == pytest.approx(0.3 * 0.7, abs=1e-5)  # the published range, scaled


def test_cli_generates_a_file(tmp_path, tiny_lite_pipe):
    from accelerando.audio import load_audio
    from accelerando.models.__main__ import main

    vae_dir = save_autoencoder_lite(tiny_lite_pipe.vae, tmp_path / "vae")
    save_stable_audio_lite(tiny_lite_pipe, tmp_path / "dit", vae_dir)
    out = tmp_path / "x.wav"
    main(["generate", "--weights", str(tmp_path / "dit"), "--autoencoder", str(vae_dir), "--prompt", "a chorale",
          "--seconds", "0.5", "--steps", "2", "--out", str(out)])
    wav, sr = load_audio(out)
    assert sr == 22050 and wav.shape[-1] == int(0.5 * 22050)
    out.unlink()
    main(["generate", "--weights", str(tmp_path / "dit"), "--autoencoder", str(vae_dir), "--prompt",
          "a chorale at 90 BPM", "--seconds", "0.5", "--steps", "2", "--no-controls", "--out", str(out)])
    assert load_audio(out)[0].shape[-1] == int(0.5 * 22050)
    with pytest.raises(SystemExit, match="up to"):
        main(["generate", "--weights", str(tmp_path / "dit"), "--autoencoder", str(vae_dir), "--prompt", "a chorale",
              "--seconds", "30", "--out", str(out)])


@pytest.mark.skipif(not (DIT_CHECKPOINT / CONFIG_FILE).is_file(), reason="no committed Stable-Audio-Lite checkpoint")
def test_committed_checkpoints_generate_music():
    pipe = load_stable_audio_lite()
    assert pipe.vae.config.sampling_rate == 22050 and VAE_CHECKPOINT.is_dir()
    audio, sr = generate(pipe, "a chorale in D major for brass at 90 BPM", seconds=2.0, steps=8)
    rms = float(np.sqrt(np.mean(audio**2)))
    assert audio.shape == (1, 1, 2 * sr) and np.isfinite(audio).all() and 1e-3 < rms < 1.0


def test_control_adapter_steers_generation_saves_and_unhooks(tmp_path):
    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG, build_stable_audio_lite
    from accelerando.musical_controls import MusicalControls

    pipe = build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG),
                                   sigma_data=0.7, controls=True)
    prompt = "a chorale in D major at 120 BPM, in 3/4"
    untrained = generate(pipe, prompt, seconds=0.5, steps=2, output_type="latent")[0]
    assert torch.equal(untrained, generate(pipe, prompt, seconds=0.5, steps=2, output_type="latent", controls=None)[0])
    with torch.no_grad():  # an adapter whose last layer is no longer zero moves the output ...
        pipe.control_adapter.net[-1].weight.normal_(std=0.5)
    steered = generate(pipe, prompt, seconds=0.5, steps=2, output_type="latent")[0]
    assert not torch.allclose(steered, untrained)
    # ... and only while generating: the hook is gone afterwards
    assert not pipe.transformer._forward_pre_hooks
    slower = [MusicalControls.from_caption(prompt.replace("120", "60"), 0.5)]
    assert not torch.allclose(generate(pipe, prompt, seconds=0.5, steps=2, output_type="latent", controls=slower)[0],
                              steered)
    with pytest.raises(ValueError, match="one MusicalControls"):
        generate(pipe, prompt, seconds=0.5, steps=2, controls=[None, None])

    vae_dir = save_autoencoder_lite(pipe.vae, tmp_path / "vae")
    save_stable_audio_lite(pipe, tmp_path / "dit", vae_dir)
    loaded = load_stable_audio_lite(tmp_path / "dit", vae_dir)
    for (name, p), (_, q) in zip(pipe.control_adapter.state_dict().items(), loaded.control_adapter.state_dict().items()):
        assert torch.equal(p.half().float(), q), name

"""MusicGen-Lite: cached decoding equals recomputation, the CFG formula, sampling, a few training
steps lowering the loss, checkpoints and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite, save_autoencoder_lite
from accelerando.models.codec_lite import LatentCodec, ResidualVQ, save_codec_lite
from accelerando.models.latent_grouping import latent_channels
from accelerando.musical_controls import CONTROL_CHANNELS
from accelerando.models.musicgen_lite import (
    TINY_CONFIG,
    MusicGenLite,
    MusicGenLiteConfig,
    MusicGenLitePipeline,
    cfg_logits,
    codebook_nll,
    inputs_and_labels,
    generate,
    load_musicgen_lite,
    null_condition,
    sample_logits,
    save_musicgen_lite,
)


def tiny(variant: str, seed: int = 0, pattern: str = "delay") -> MusicGenLite:
    torch.manual_seed(seed)
    return MusicGenLite(MusicGenLiteConfig(variant=variant, pattern=pattern, **TINY_CONFIG)).eval()


def condition(b: int = 2, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(b, length, 8, generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[-1, 3:] = 0  # a shorter prompt in the batch: padding must not leak into the result
    return states, mask


@pytest.mark.parametrize("variant,pattern", [("a", "delay"), ("b", "delay"), ("a", "flatten"), ("b", "flatten")])
def test_cached_decoding_gives_the_logits_and_tokens_of_recomputation(variant, pattern):
    model = tiny(variant, pattern=pattern)
    states, mask = condition()
    codes = torch.randint(0, 16, (2, 2, 9), generator=torch.Generator().manual_seed(1))
    prompt = codes[..., :4] if variant == "b" else None
    inputs, _ = inputs_and_labels(codes, special=16, pattern=pattern)
    full = model(inputs, states, mask, prompt)
    cache = model.new_cache()
    steps = [model(inputs[..., s:s + 1], states, mask, prompt, cache=cache, past_steps=s) for s in range(inputs.shape[-1])]
    assert torch.allclose(torch.cat(steps, 2), full, atol=1e-5)
    kwargs = dict(prompt_codes=prompt, guidance=2.5, top_k=6, seed=4)
    cached, _ = generate(model, states, mask, 12, **kwargs)
    uncached, _ = generate(model, states, mask, 12, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached) and cached.shape == (2, 2, 12)
    # continuing a clip keeps its codes; the prefilled cache and step-by-step recomputation agree
    kept, _ = generate(model, states, mask, 12, continuation=codes[..., :5], **kwargs)
    kept_slow, _ = generate(model, states, mask, 12, continuation=codes[..., :5], use_cache=False, **kwargs)
    assert torch.equal(kept[..., :5], codes[..., :5]) and torch.equal(kept, kept_slow)


@pytest.mark.parametrize("pattern", ["delay", "flatten"])
def test_each_code_is_predicted_from_the_codes_before_it_only(pattern):
    """Changing code (k, t) changes no prediction of a code the pattern places before it, and
    the prediction of a code the pattern places after it (the model reads what it wrote)."""
    model = tiny("a", pattern=pattern)
    states, mask = condition(b=1)
    codes = torch.randint(0, 16, (1, 2, 6), generator=torch.Generator().manual_seed(2))
    inputs, labels = inputs_and_labels(codes, special=16, pattern=pattern)
    changed = codes.clone()
    changed[0, 1, 3] = (codes[0, 1, 3] + 1) % 16
    inputs2, labels2 = inputs_and_labels(changed, special=16, pattern=pattern)
    where = (labels != labels2).nonzero()[0]  # the changed code's place [batch, row, step] in the layout
    a, b = model(inputs, states, mask), model(inputs2, states, mask)
    step = int(where[2])
    assert torch.equal(a[..., : step + 1, :], b[..., : step + 1, :])
    assert not torch.allclose(a[..., step + 1:, :], b[..., step + 1:, :])
    assert inputs.shape[-1] == (6 * 2 if pattern == "flatten" else 6 + 1)


def test_text_padding_does_not_change_the_result():
    model = tiny("a")
    states, mask = condition(b=1, length=3)
    padded_states = torch.cat([states, torch.randn(1, 4, 8)], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.long)], 1)
    inputs = torch.randint(0, 16, (1, 2, 6))
    assert torch.allclose(model(inputs, states, mask), model(inputs, padded_states, padded_mask), atol=1e-5)


def test_classifier_free_guidance_combines_the_two_branches():
    cond, uncond = torch.randn(3, 7), torch.randn(3, 7)
    assert torch.allclose(cfg_logits(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))
    assert torch.allclose(cfg_logits(cond, uncond, 1.0), cond)
    # greedy generation with guidance w picks argmax(uncond + w (cond - uncond)) at the first step
    model = tiny("a")
    states, mask = condition(b=1)
    null_states, null_mask = null_condition(states, mask)
    start = torch.full((1, 2, 1), 16)
    c, u = model(start, states, mask)[:, :, -1], model(start, null_states, null_mask)[:, :, -1]
    codes, _ = generate(model, states, mask, 1, guidance=4.0, temperature=0)
    assert codes[0, 0, 0] == cfg_logits(c, u, 4.0)[0, 0].argmax()


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert (sample_logits(logits, temperature=0) == 1).all()
    assert (sample_logits(logits, top_k=1, generator=g) == 1).all()
    assert set(sample_logits(logits, top_k=2, generator=g).tolist()) == {1, 3}
    assert (sample_logits(logits, top_p=0.5, generator=g) == 1).all()  # the top token alone holds 64%
    assert set(sample_logits(logits, generator=g).tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="top_p"):
        sample_logits(logits, top_p=1.5)


@pytest.fixture(scope="module")
def tiny_codec_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec")
    vae = build_autoencoder_lite(AUTOENCODER_TINY_CONFIG, seed=0).eval()
    save_autoencoder_lite(vae, root / "vae")
    rvq = ResidualVQ.fit(torch.randn(400, latent_channels(vae)), codebooks=2, size=16, iters=3)
    save_codec_lite(rvq, root / "codec", vae_path=root / "vae")
    return root


FRAME_RATE = 22050 / 1024  # the tiny codec's frame rate


def synthetic_tokens(n: int, frames: int, seed: int) -> dict:
    """Codes that follow their caption: clip i counts up from its offset, one step per frame."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randint(0, 16, (n,), generator=g)
    t = torch.arange(frames)
    codes = torch.stack([(offset[:, None] + t) % 16, (offset[:, None] + 2 * t) % 16], 1)
    states = torch.zeros(n, 4, 8)
    states[torch.arange(n), 0, offset % 8] = 1.0
    return {"codes": codes, "states": states.half(), "mask": torch.ones(n, 4, dtype=torch.long),
            "captions": [f"clip {i}" for i in range(n)], "controls": torch.zeros(n, CONTROL_CHANNELS, frames)}


def beat_tokens(n: int, frames: int, seed: int) -> dict:
    """Codes that follow a beat grid the caption does not state: codebook 0 is 1 on the frame a beat
    starts in and 0 elsewhere, at a tempo drawn per clip (every 3 to 6 frames); codebook 1 copies it."""
    from accelerando.musical_controls import MusicalControls, control_features

    g = np.random.default_rng(seed)
    period = g.integers(3, 7, n)
    phase = g.integers(0, 3, n)
    controls = [MusicalControls(beats=tuple((phase[i] + np.arange(0, frames, period[i])) / FRAME_RATE))
                for i in range(n)]
    features = torch.from_numpy(control_features(controls, frames, FRAME_RATE))
    beat = features[:, 4].long()
    return {"codes": torch.stack([beat, beat], 1), "states": torch.zeros(n, 4, 8).half(),
            "mask": torch.ones(n, 4, dtype=torch.long), "captions": [f"clip {i}" for i in range(n)],
            "controls": features}


def test_controls_carry_the_beat_the_text_does_not(tiny_codec_dir, tmp_path):
    from accelerando.models.codec_lite import load_codec_lite
    from accelerando.train.musicgen_lite import MusicGenLiteTrainingConfig, train

    codec = load_codec_lite(tiny_codec_dir / "codec", tiny_codec_dir / "vae")
    assert codec.frame_rate == pytest.approx(FRAME_RATE)
    data = {"codec": codec, "train": beat_tokens(64, 24, 0), "val": beat_tokens(16, 24, 1)}
    best = {}
    for controls in (False, True):
        cfg = MusicGenLiteTrainingConfig(codec=str(tiny_codec_dir / "codec"), out=str(tmp_path / f"lm{controls}"),
                                         max_steps=100, batch_size=8, accumulate=1, lr=3e-3, hidden_size=32, layers=2,
                                         heads=2, ffn_size=64, dropout=0.0, ema_decay=0.8, val_every=50, sample_every=0,
                                         threads=1, controls=controls, control_dropout=0.0, cond_dropout=0.0)
        best[controls] = train(cfg, data=data, log_fn=lambda *a: None)["best"]["val_nll"]
    # without controls the beat is guessable only from the codes before it; with them, from the features
    assert best[True] < 0.5 * best[False], best
    # a controlled run can start from the uncontrolled checkpoint: its zero control projection changes nothing
    cfg = dataclasses.replace(cfg, out=str(tmp_path / "lmInit"), init_from=str(tmp_path / "lmFalse"), lr=0.0,
                              ema_decay=1.0, max_steps=1, val_every=1)
    assert train(cfg, data=data, log_fn=lambda *a: None)["best"]["val_nll"] == pytest.approx(best[False], rel=1e-3)
    model = load_musicgen_lite(tmp_path / "lmTrue", tiny_codec_dir / "codec")
    assert model.config.control_channels == CONTROL_CHANNELS
    with pytest.raises(ValueError, match="without them"):
        load_musicgen_lite(tmp_path / "lmFalse", tiny_codec_dir / "codec")(
            torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.long),
            controls=torch.zeros(1, CONTROL_CHANNELS, 3))


@pytest.mark.parametrize("variant,pattern", [("a", "delay"), ("b", "delay"), ("a", "flatten")])
def test_a_few_training_steps_lower_the_validation_loss(variant, pattern, tiny_codec_dir, tmp_path):
    from accelerando.models.codec_lite import load_codec_lite
    from accelerando.train.musicgen_lite import MusicGenLiteTrainingConfig, train

    codec = load_codec_lite(tiny_codec_dir / "codec", tiny_codec_dir / "vae")
    data = {"codec": codec, "train": synthetic_tokens(64, 24, 0), "val": synthetic_tokens(16, 24, 1)}
    frame_s = 1 / codec.frame_rate
    cfg = MusicGenLiteTrainingConfig(variant=variant, pattern=pattern, codec=str(tiny_codec_dir / "codec"), out=str(tmp_path / "lm"), max_steps=150,
                      minutes=5, batch_size=8, accumulate=2, lr=3e-3, hidden_size=32, layers=2, heads=2, ffn_size=64,
                      dropout=0.0, ema_decay=0.8, val_every=50, sample_every=0, prompt_seconds=(4 * frame_s, 8 * frame_s),
                      threads=1)
    log = train(cfg, data=data, log_fn=lambda *a: None)
    first, last = sum(log["val"][0]["ema"]) / 2, log["best"]["val_nll"]
    # the codes are uniform over the 16 ids (log 16 = 2.77 nats), so any drop is learned structure;
    # flattened, the same rule sits K steps back instead of in the step's input, and is learned slower
    assert last < first - (0.5 if pattern == "delay" else 0.2), (first, last)
    per_frame = 8 * 2 * 2  # batch x accumulate x codebooks; B's loss scores the clip after its 4-8 frame prompt
    tokens = log["throughput"]["tokens_per_step"]
    assert tokens == per_frame * 24 if variant == "a" else per_frame * 16 <= tokens <= per_frame * 20
    model = load_musicgen_lite(tmp_path / "lm", tiny_codec_dir / "codec")
    assert model.config.variant == variant and model.config.pattern == pattern and len(list((tmp_path / "lm" / "top3").iterdir())) == 3
    pipe = MusicGenLitePipeline(model, codec, text_encoder=FakeText())
    prompt = codec.decode(data["val"]["codes"][:1, :, :6])[0] if variant == "b" else None
    audio, info = pipe(["clip 0"], seconds=10 * frame_s, audio_prompt=prompt, audio_prompt_sr=codec.sample_rate)
    assert audio.shape[:2] == (1, 1) and info["codes"].shape == (1, 2, 10) and torch.isfinite(audio).all()


class FakeText:
    """Stands in for MiniLM in tiny tests: 8-wide states."""

    def encode(self, texts):
        return torch.ones(len(texts), 4, 8), torch.ones(len(texts), 4, dtype=torch.long)


def test_checkpoints_and_bad_input_name_the_fix(tiny_codec_dir, tmp_path):
    from accelerando.models.codec_lite import load_codec_lite

    model = tiny("b")
    save_musicgen_lite(model, tmp_path / "b", tiny_codec_dir / "codec")
    loaded = load_musicgen_lite(tmp_path / "b", tiny_codec_dir / "codec")
    assert all(torch.allclose(p, q.half().float()) for p, q in zip(loaded.parameters(), model.parameters()))
    with pytest.raises(FileNotFoundError, match="train.musicgen_lite"):
        load_musicgen_lite(tmp_path / "missing", tiny_codec_dir / "codec")
    other = tmp_path / "other_codec"
    save_codec_lite(ResidualVQ(2, 16, 64), other, vae_path=tiny_codec_dir / "vae")
    with pytest.raises(ValueError, match="another codec"):
        load_musicgen_lite(tmp_path / "b", other)
    with pytest.raises(ValueError, match="variant"):
        MusicGenLiteConfig(variant="c")
    states, mask = condition()
    with pytest.raises(ValueError, match="model A takes no audio prompt"):
        generate(tiny("a"), states, mask, 4, prompt_codes=torch.zeros(2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at most 32"):
        model(torch.zeros(2, 2, 1, dtype=torch.long), states, mask, torch.zeros(2, 2, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="nothing to generate"):
        generate(model, states, mask, 4, continuation=torch.zeros(2, 2, 4, dtype=torch.long))
    pipe = MusicGenLitePipeline(tiny("a"), load_codec_lite(tiny_codec_dir / "codec", tiny_codec_dir / "vae"),
                                text_encoder=FakeText())
    with pytest.raises(ValueError, match="trained on clips of up to"):
        pipe(["x"], seconds=100.0)
    with pytest.raises(ValueError, match="empty or blank"):
        pipe([" "], seconds=1.0)
    with pytest.raises(ValueError, match="audio_prompt_sr"):
        pipe(["x"], seconds=1.0, audio_prompt=torch.zeros(1, 1000))
    with pytest.raises(Exception, match="NaN"):
        pipe(["x"], seconds=0.5, audio_prompt=torch.full((1, 4000), float("nan")), audio_prompt_sr=pipe.sample_rate)


@pytest.mark.parametrize("variant", ["a", "b"])
def test_committed_models_generate_from_the_command_line(variant, tmp_path):

    import soundfile as sf

    from accelerando.models.__main__ import main

    prompt = tmp_path / "prompt.wav"
    t = torch.arange(22050 * 2) / 22050
    sf.write(prompt, (0.3 * torch.sin(2 * torch.pi * 220 * t)).numpy(), 22050)
    out = tmp_path / "y.wav"
    main(["generate", "--model", f"musicgen-lite-{variant}", "--prompt", "a chorale in D major for brass at 90 BPM",
          "--audio-prompt", str(prompt), "--seconds", "1", "--out", str(out), "--rerank", "2"])
    audio, sr = sf.read(out)
    assert sr == 22050 and len(audio) >= 22050 and abs(audio).max() > 0
    with pytest.raises(SystemExit, match="trained on clips of up to"):
        main(["generate", "--model", f"musicgen-lite-{variant}", "--prompt", "x", "--seconds", "60",
              "--out", str(out)])
    with pytest.raises(SystemExit, match="--steps is an option of stable-audio models"):
        main(["generate", "--model", f"musicgen-lite-{variant}", "--prompt", "x", "--steps", "10", "--out", str(out)])
    with pytest.raises(SystemExit, match="--audio-prompt, --top-k are options of musicgen-lite models"):
        main(["generate", "--model", "stable-audio-lite", "--prompt", "x", "--audio-prompt", str(prompt),
              "--top-k", "5", "--out", str(out)])

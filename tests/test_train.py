"""The shared training loop (`accelerando.train.run_training`): a run stopped and resumed equals
an uninterrupted run of the same steps, bit for bit; bf16 autocast trains like fp32."""

import json

import pytest
import torch
from safetensors.torch import load_file

from accelerando.models.codec_lite import load_codec_lite
from accelerando.train import RESUME_FILE, default_precision, resolve_precision
from test_musicgen_lite import synthetic_tokens, tiny_codec_dir  # noqa: F401 (tiny_codec_dir: a fixture)


def same_weights(a, b) -> bool:
    """Every tensor of two safetensors files equal, bit for bit."""
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def step_losses(log: dict) -> list[float]:
    return [row["loss"] for row in log["steps"]]


# -- MusicGen-Lite ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokens(tiny_codec_dir):
    """The tiny codec (random autoencoder, 2 codebooks of 16) and synthetic token splits."""
    codec = load_codec_lite(tiny_codec_dir / "codec", tiny_codec_dir / "vae")
    return tiny_codec_dir, {"codec": codec, "train": synthetic_tokens(32, 12, 0), "val": synthetic_tokens(8, 12, 1)}


def musicgen_config(root, out, **changes):
    from accelerando.train.musicgen_lite import MusicGenLiteTrainingConfig

    frame_s = 1 / 21.533
    settings = dict(variant="b", codec=str(root / "codec"), out=str(out), max_steps=8, minutes=5, batch_size=4,
                    accumulate=2, lr=3e-3, hidden_size=16, layers=1, heads=2, ffn_size=32, dropout=0.1,
                    val_every=3, sample_every=0, prompt_seconds=(2 * frame_s, 4 * frame_s), threads=1,
                    precision="fp32")
    return MusicGenLiteTrainingConfig(**{**settings, **changes})


def test_musicgen_lite_stopped_and_resumed_equals_one_run(tiny_tokens, tmp_path):
    from accelerando.train.musicgen_lite import train

    root, data = tiny_tokens
    straight = train(musicgen_config(root, tmp_path / "straight"), data=data, log_fn=lambda *a: None)
    assert not (tmp_path / "straight" / RESUME_FILE).exists()  # the goal met: no state left

    first = train(musicgen_config(root, tmp_path / "resumed", steps_this_run=4), data=data, log_fn=lambda *a: None)
    assert first["throughput"]["steps"] == 4 and "best" not in first
    assert (tmp_path / "resumed" / RESUME_FILE).is_file()
    resumed = train(musicgen_config(root, tmp_path / "resumed"), data=data, log_fn=lambda *a: None, command="second")

    assert step_losses(resumed) == step_losses(straight) and len(step_losses(resumed)) == 8
    assert resumed["best"] == straight["best"]
    assert same_weights(tmp_path / "straight" / "musicgen_lite.safetensors",
                        tmp_path / "resumed" / "musicgen_lite.safetensors")
    runs = json.loads((tmp_path / "resumed" / "train_log.json").read_text())["runs"]
    assert [(r["start_step"], r["end_step"]) for r in runs] == [(0, 4), (4, 8)] and runs[1]["command"] == "second"
    assert resumed["throughput"]["tokens_per_step"] == straight["throughput"]["tokens_per_step"]


def test_resuming_with_other_settings_is_refused(tiny_tokens, tmp_path):
    from accelerando.train.musicgen_lite import train

    root, data = tiny_tokens
    train(musicgen_config(root, tmp_path, steps_this_run=2), data=data, log_fn=lambda *a: None)
    with pytest.raises(ValueError, match="lr"):
        train(musicgen_config(root, tmp_path, lr=1e-3), data=data, log_fn=lambda *a: None)


def test_bf16_autocast_trains_like_fp32(tiny_tokens, tmp_path):
    from accelerando.train.musicgen_lite import train

    root, data = tiny_tokens
    logs = {p: train(musicgen_config(root, tmp_path / p, precision=p, max_steps=6, dropout=0.0), data=data,
                     log_fn=lambda *a: None) for p in ("fp32", "bf16")}
    fp32, bf16 = step_losses(logs["fp32"]), step_losses(logs["bf16"])
    assert fp32 != bf16  # the bf16 path ran in bf16
    assert all(abs(a - b) < 0.05 * a for a, b in zip(fp32, bf16)), (fp32, bf16)
    assert logs["bf16"]["runs"][0]["precision"] == "bf16"


def test_default_precision_follows_amx(monkeypatch):
    import accelerando.train as train_module

    monkeypatch.setattr(train_module, "cpu_flags", lambda: ["AVX2", "AMX-BF16"])
    assert default_precision() == "bf16" and resolve_precision(None) == "bf16"
    monkeypatch.setattr(train_module, "cpu_flags", lambda: ["AVX2", "AVX-512"])
    assert default_precision() == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")


# -- Stable-Audio-Lite DiT --------------------------------------------------------------------------


def test_dit_stopped_and_resumed_equals_one_run(tiny_corpus, tmp_path):
    from accelerando.train.dit import DiTTrainingConfig, train

    def config(out, **changes):
        return DiTTrainingConfig(model="tiny", out=str(out), max_steps=6, batch_size=2, val_every=2, warmup_steps=2,
                                 lr=3e-3, threads=1, precision="fp32", **changes)

    straight = train(config(tmp_path / "straight"), corpus=tiny_corpus, log_fn=lambda *a: None)
    train(config(tmp_path / "resumed", steps_this_run=3), corpus=tiny_corpus, log_fn=lambda *a: None)
    assert not (tmp_path / "resumed" / "stable_audio_lite.safetensors").exists()  # no checkpoint before the goal
    resumed = train(config(tmp_path / "resumed"), corpus=tiny_corpus, log_fn=lambda *a: None)

    assert step_losses(resumed) == step_losses(straight) and len(step_losses(resumed)) == 6
    assert resumed["val"][-1]["ema"] == straight["val"][-1]["ema"]
    assert same_weights(tmp_path / "straight" / "stable_audio_lite.safetensors",
                        tmp_path / "resumed" / "stable_audio_lite.safetensors")


def test_dit_starts_from_a_checkpoint_without_controls(tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    from accelerando.train.dit import DiTTrainingConfig, train

    def config(out, **changes):
        return DiTTrainingConfig(model="tiny", out=str(out), max_steps=2, batch_size=2, val_every=2, warmup_steps=1,
                                 threads=1, precision="fp32", **changes)

    train(config(tmp_path / "plain", controls=False), corpus=tiny_corpus, log_fn=lambda *a: None)
    # no optimizer step: lr 0, EMA decay 1 keep the started weights, which must be the saved ones
    log = train(config(tmp_path / "controlled", init_from=str(tmp_path / "plain"), lr=0.0, ema_decay=1.0),
                corpus=tiny_corpus, log_fn=lambda *a: None)
    before = load_file(str(tmp_path / "plain" / "stable_audio_lite.safetensors"))
    after = load_file(str(tmp_path / "controlled" / "stable_audio_lite.safetensors"))
    assert set(after) - set(before) and all(k.startswith("control_adapter.") for k in set(after) - set(before))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert log["settings"]["init_from"] == str(tmp_path / "plain")

import os

# Tests never log to wandb (the book's own runs log offline).
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_lite_pipe():
    """Stable-Audio-Lite's pipeline at the tiny test size, random weights (one per test module)."""
    from accelerando.models.autoencoder_lite import AUTOENCODER_TINY_CONFIG, build_autoencoder_lite
    from accelerando.models.stable_audio_lite import DIT_TINY_CONFIG, build_stable_audio_lite

    return build_stable_audio_lite(DIT_TINY_CONFIG, vae=build_autoencoder_lite(AUTOENCODER_TINY_CONFIG), sigma_data=0.7)


@pytest.fixture(scope="session")
def tiny_corpus():
    """The "tiny" corpus preset rendered at 22.05 kHz, the Lite models' rate (built once, cached on disk)."""
    from accelerando.data import build_corpus, preset

    return build_corpus(preset("tiny", sample_rate=22050))

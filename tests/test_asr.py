"""Speech recognition around LaCT-ASR: error rates on constructed cases, CTC batches of joined
utterances, context and batching that change no frame they should not, adaptation by fine-tuning,
the fast-weight trace, the evaluation sets, and the `transcribe` command's errors."""

import json
import math

import numpy as np
import pytest
import torch

from accelerando.metrics.speech import corpus_rate, error_rates, paired_rate, relative_change
from accelerando.models.lact_asr import (CHARACTERS, LaCTASR, LaCTASRConfig, ctc_batch, encode_text,
                                         matched_baseline, utterance_log_probs)


def _model(seed=0, **layer):
    torch.manual_seed(seed)
    layer = {"dim": 32, "heads": 2, "window": 16, "ttt_heads": 2, "chunk": 8, **layer}
    return LaCTASR(LaCTASRConfig(layers=2, dropout=0.0, layer=layer)).eval()


def _data(lengths=(60, 45, 80), texts=("play the march", "mute it", "a loud waltz"), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"features": [torch.randn(n, 80, generator=g) for n in lengths],
            "targets": [torch.tensor(encode_text(t)) for t in texts], "texts": list(texts),
            "voices": ["en-us"] * len(texts)}


def test_error_rates_count_substitutions_deletions_and_insertions():
    rates = error_rates(["play the march", "mute the organ", "a b"], ["play a march now", "", "a b"])
    assert rates["word_errors"].tolist() == [2, 3, 0]  # 1 substitution + 1 insertion; all deleted; none
    assert rates["words"].tolist() == [3, 3, 2]
    assert rates["char_errors"][1] == len("mute the organ")
    assert corpus_rate(rates, "word").value == pytest.approx(5 / 8)  # total errors / total words
    assert rates["wer"].mean() != pytest.approx(5 / 8)  # not the mean of per-utterance rates
    same = paired_rate(rates, rates, "char")
    assert same.mean_diff.value == 0 and same.wilcoxon_p == 1.0
    assert relative_change(corpus_rate(rates.iloc[:1], "word"), corpus_rate(rates, "word")) == pytest.approx(
        (2 / 3 - 5 / 8) / (5 / 8))
    with pytest.raises(ValueError, match="empty"):
        error_rates([""], ["x"])
    with pytest.raises(ValueError, match="one of each"):
        error_rates(["a"], [])
    with pytest.raises(ValueError, match="different utterances"):
        paired_rate(rates, rates.iloc[:2])
    with pytest.raises(ValueError, match="'word'"):
        corpus_rate(rates, "phoneme")


def test_matched_asr_baselines_have_the_parameters_of_lact():
    lact = LaCTASRConfig(layers=2, layer={"dim": 48, "heads": 2, "ttt_heads": 2})
    n = sum(p.numel() for p in LaCTASR(lact).parameters())
    for window in (16, None):
        base = matched_baseline(lact, window)
        assert not base.layer["fast_weights"] and base.layer["window"] == (window or 10**9)
        m = sum(p.numel() for p in LaCTASR(base).parameters())
        assert abs(m - n) <= 2 * 3 * 48  # within one hidden unit per layer


def test_a_ctc_batch_joins_a_groups_utterances_with_a_space():
    data = _data()
    batch = ctc_batch(data, [[0, 1], [2]])
    assert batch["features"].shape == (2, 105, 80)
    assert torch.equal(batch["features"][0, 60:105], data["features"][1])
    assert batch["target_lengths"].tolist() == [len("play the march mute it"), len("a loud waltz")]
    joined = "".join(CHARACTERS[i] for i in batch["targets"][: batch["target_lengths"][0]])
    assert joined == "play the march mute it"
    assert batch["frames"].tolist() == [LaCTASR.frames_out(105), LaCTASR.frames_out(80)]


@torch.no_grad()
def test_batching_and_context_change_only_what_they_should():
    model, data = _model(), _data()
    alone = [model(f[None])[0] for f in data["features"]]
    batched = utterance_log_probs(model, data["features"], batch=3)
    for a, b in zip(alone, batched):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # end padding changes no earlier frame
    context = torch.randn(40, 80)
    heard = utterance_log_probs(model, data["features"][:1], context=context)[0]
    whole = model(torch.cat([context, data["features"][0]])[None])[0]
    torch.testing.assert_close(heard, whole[LaCTASR.frames_out(40):])
    assert not torch.allclose(heard[-5:], alone[0][-5:])  # the fast weights remember the context


def test_fine_tuning_adapts_a_copy_and_leaves_the_model_alone():
    from accelerando.bench.asr import finetune, split_adaptation

    model, data = _model(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, seconds = finetune(model, data, steps=3, lr=1e-3)
    assert seconds > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    adapt, test = split_adaptation(list(range(10)), 3, seed=1)
    assert len(adapt) == 3 and sorted(adapt + test) == list(range(10))
    with pytest.raises(ValueError, match="at least one"):
        split_adaptation([1, 2], 2)
    with pytest.raises(ValueError, match="at least one step"):
        finetune(model, data, steps=0)


def test_the_fast_weight_trace_follows_every_update():
    from accelerando.bench.asr import fast_weight_trace

    model = _model()
    trace = fast_weight_trace(model, torch.randn(200, 80))  # 50 output frames: 6 full chunks of 8
    assert set(trace["layer"]) == {0, 1}
    assert trace.groupby("layer")["update"].max().tolist() == [6, 6]
    assert (trace[trace["update"] > 0]["relative_change"] > 0).all()
    with pytest.raises(ValueError, match="no fast weights"):
        fast_weight_trace(_model(fast_weights=False), torch.randn(50, 80))


def test_streaming_cost_reports_latency_and_matches_the_whole_recording():
    from accelerando.bench.asr import streaming_cost

    result = streaming_cost(_model(), torch.randn(16000) * 0.1, piece_ms=40)
    assert result["pieces"] == 25 and result["algorithmic_latency_ms"] == 15.0
    assert result["max_difference_from_whole"] < 1e-4
    assert result["compute_ms_p95"] >= result["compute_ms_median"] > 0


def test_evaluation_sets_hold_unseen_words_and_held_out_sentences():
    from accelerando.data.corpus import split_of
    from accelerando.data.speech import _GRAMMAR
    from accelerando.data.speech_sets import everyday_sentences, held_out_sentences

    everyday = everyday_sentences(40)
    assert len(set(everyday)) == 40
    music_words = {w for words in _GRAMMAR.values() for phrase in words for w in phrase.split()}
    shared = {w for s in everyday for w in s.split()} & music_words
    assert shared <= {"the", "a", "and", "at", "in", "on", "of", "to", "for"}, shared
    for s in everyday:
        encode_text(s)
    held = held_out_sentences(12)
    assert all(split_of("speech:" + s, 0.1, 0.1) == "test" for s in held)


def test_a_speech_set_speaks_each_text_with_the_asked_voices(tmp_path):
    pytest.importorskip("espeakng_loader")
    from accelerando.data.speech_sets import UNSEEN_VOICES, build_speech_set

    corpus = build_speech_set(["play the march", "mute the organ"], "t", voices=UNSEEN_VOICES, root=tmp_path)
    assert len(corpus) == 2 and {u.voice for u in corpus} <= set(UNSEEN_VOICES)
    assert all(u.split == "test" and u.sample_rate == 16000 and u.load().std() > 0.01 for u in corpus)
    assert build_speech_set(["play the march", "mute the organ"], "t", voices=UNSEEN_VOICES, root=tmp_path).path == corpus.path
    with pytest.raises(ValueError, match="no voice"):
        build_speech_set(["play"], "bad", voices=("xx-none",), root=tmp_path)


def test_transcribe_command_prints_text_and_names_bad_input(tmp_path, capsys):
    import soundfile as sf

    from accelerando.models.__main__ import main
    from accelerando.models.lact_asr import save_lact_asr

    save_lact_asr(_model(), tmp_path / "asr")
    t = np.arange(24000) / 24000
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 24000)  # another rate: resampled
    main(["transcribe", str(tmp_path / "tone.wav"), "--weights", str(tmp_path / "asr"), "--json"])
    out = capsys.readouterr().out
    assert json.loads(out)["seconds"] == 1.0 and set(json.loads(out)["text"]) <= set(CHARACTERS)
    main(["transcribe", str(tmp_path / "tone.wav"), "--weights", str(tmp_path / "asr"), "--beam", "4"])
    sf.write(tmp_path / "silence.wav", np.zeros(16000), 16000)
    with pytest.raises(SystemExit, match="silent"):
        main(["transcribe", str(tmp_path / "silence.wav"), "--weights", str(tmp_path / "asr")])
    with pytest.raises(SystemExit, match="lacks"):
        main(["transcribe", str(tmp_path / "tone.wav"), "--weights", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no audio file"):
        main(["transcribe", str(tmp_path / "missing.wav"), "--weights", str(tmp_path / "asr")])


def test_noise_is_the_same_for_every_system_and_gone_at_infinite_snr():
    from types import SimpleNamespace

    from accelerando.bench.asr import noisy

    wav = (0.3 * np.sin(np.linspace(0, 2000, 16000))).astype(np.float32)
    items = [SimpleNamespace(load=lambda: wav, sample_rate=16000, transcript="a tone", voice="x")] * 2
    clean, a, b = noisy(items, math.inf), noisy(items, 10.0, seed=4), noisy(items, 10.0, seed=4)
    assert torch.equal(a["features"][0], b["features"][0])  # seeded: every system hears the same noise
    assert not torch.equal(a["features"][0], a["features"][1])  # each utterance its own
    assert not torch.allclose(a["features"][0], clean["features"][0])
    assert a["texts"] == ["a tone", "a tone"]


def test_a_local_pretrained_recogniser_gives_a_row_and_a_missing_one_none(tmp_path):
    import json
    from types import SimpleNamespace

    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from accelerando.bench.asr import external_transcripts

    wav = (0.3 * np.sin(np.linspace(0, 3000, 16000))).astype(np.float32)
    items = [SimpleNamespace(load=lambda: wav, sample_rate=16000)] * 2
    assert external_transcripts("", items) == (None, "no local path given")
    texts, why = external_transcripts(str(tmp_path / "nowhere"), items)
    assert texts is None and "no checkpoint" in why
    vocab = {"<pad>": 0, "|": 1, "a": 2, "b": 3, "7": 4}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, pad_token_id=0)
    out = tmp_path / "w2v"
    Wav2Vec2ForCTC(config).save_pretrained(out)
    Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), pad_token="<pad>", unk_token="<pad>",
                         word_delimiter_token="|").save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(out)
    texts, why = external_transcripts(str(out), items)
    assert len(texts) == 2 and why.startswith("loaded")
    assert all(set(t) <= set(CHARACTERS) for t in texts)  # digits spelled out, nothing else kept


def test_quantized_variants_leave_the_model_alone_and_name_what_they_skipped():
    from accelerando.bench.asr import quantized_variants
    from accelerando.quant import RTNConfig

    model, data = _model(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = RTNConfig(weight_bits=8, act_bits=8, group_size=16)  # the tiny model's layers are 32 wide
    variants, report = quantized_variants(model, {"w8": config}, data["features"][:2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    row = report.set_index("variant").loc["w8"]
    assert row["linears quantized"] > 0 and "head" in row["linears skipped"] and "ttt_lr" in row["linears skipped"]
    assert 0 < row["full-precision share"] < 1
    with torch.no_grad():
        assert torch.isfinite(variants["w8"](data["features"][0][None])).all()


def test_cost_by_length_times_every_system_at_every_length():
    from accelerando.bench.asr import cost_by_length

    cost = cost_by_length({"a": _model(), "b": _model(seed=1, fast_weights=False)}, seconds=(1, 2), rounds=1)
    assert sorted(zip(cost.system, cost.audio_seconds)) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert (cost.latency_s_min > 0).all() and (cost.rtf == cost.latency_s_min / cost.audio_seconds).all()

"""WP1 on token models and the audits: `bench.quant_tokens` (MusicGen-Lite and transformers'
MusicGen decoder), `bench.quant.family_audit`, and the QAT exports of `accelerando.quant` and `accelerando.train.qat`."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from accelerando.bench.quant_tokens import (
    causal_lm_logits,
    code_batches,
    musicgen_lite_batches,
    summarize_tokens,
    token_fidelity,
)
from accelerando.quant import TOKEN_SKIP, QuantReport, preset, register_quantize_module_handler


@dataclass
class _Identity:
    """A config whose handler changes nothing: the measurement itself must then report no change."""

    name: str = "identity"


@register_quantize_module_handler(_Identity)
def _identity(model, config, calib, filter_fn, audio_fn):
    calib(model)
    return QuantReport(config)


def _split(n: int, k: int, size: int, frames: int, text_dim: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 5, dtype=torch.long)
    mask[0, 3:] = 0  # one shorter caption
    return {"codes": torch.randint(0, size, (n, k, frames), generator=g),
            "states": torch.randn(n, 5, text_dim, generator=g).half(), "mask": mask}


@pytest.fixture(scope="module")
def lite():
    from accelerando.models.musicgen_lite import TINY_CONFIG, MusicGenLite, MusicGenLiteConfig

    torch.manual_seed(0)
    models = {v: MusicGenLite(MusicGenLiteConfig(variant=v, **TINY_CONFIG)).eval() for v in "ab"}
    cfg = models["a"].config
    return models, _split(6, cfg.codebooks, cfg.codebook_size, 20, cfg.text_dim, 0), \
        _split(5, cfg.codebooks, cfg.codebook_size, 20, cfg.text_dim, 1)


def test_identity_gives_zero_nll_increase_and_full_agreement(lite):
    models, train, test = lite
    for v, frames in (("a", 0), ("b", 6)):
        m = models[v]
        rows, reports = token_fidelity(m, {"same": _Identity()}, musicgen_lite_batches(train, m, frames, 4),
                                       musicgen_lite_batches(test, m, frames, 2))
        assert [r["clip"] for r in rows] == list(range(5))
        assert all(r["nll_increase"] == 0.0 and r["agreement"] == 1.0 for r in rows)
        assert reports["same"].quantized == []


def test_full_precision_nll_is_token_nll(lite):
    """The per-clip NLL pools codebooks (each scores T tokens): the mean over K of token_nll."""
    from accelerando.bench.musicgen import token_nll

    models, train, test = lite
    m = models["a"]
    rows, _ = token_fidelity(m, {"rtn": preset("rtn", 8, 8, group_size=16, skip=TOKEN_SKIP)},
                             musicgen_lite_batches(train, m, 0), musicgen_lite_batches(test, m, 0, 3))
    ref = token_nll(m, test["codes"], test["states"], test["mask"]).mean(1)
    np.testing.assert_allclose([r["nll_fp"] for r in rows], ref.numpy(), rtol=1e-5)
    assert all(r["tokens"] == 2 * 20 for r in rows)


def test_quantized_lite_skips_conditioning_and_heads_and_codes_gelu_unsigned(lite):
    models, train, test = lite
    m = models["b"]
    configs = {"w8a8": preset("svdquant", 8, 8, group_size=16, rank=4, skip=TOKEN_SKIP),
               "w4a4": preset("rtn", 4, 4, group_size=16, skip=TOKEN_SKIP)}
    rows, reports = token_fidelity(m, configs, musicgen_lite_batches(train, m, 6), musicgen_lite_batches(test, m, 6))
    table = reports["w4a4"].table()
    skipped = set(reports["w4a4"].skipped)
    assert {"text_proj", "prompt_proj", "lm_heads.0", "lm_heads.1"} <= skipped
    assert not any(n.startswith("layers.") for n in skipped)
    fc2 = table[table.name.str.endswith("fc2")]
    assert len(fc2) == 2 and not fc2.act_signed.astype(bool).any() and (fc2.act_shift > 0).all()
    summary = {s["method"]: s for s in summarize_tokens(rows, n_resamples=50)}
    assert summary["w8a8"]["agreement"].value > 0.9
    assert summary["w8a8"]["agreement"].value >= summary["w4a4"]["agreement"].value
    for s in summary.values():
        assert s["nll_increase"].ci_low <= s["nll_increase"].value <= s["nll_increase"].ci_high and s["n"] == 5
    assert not any(type(mod).__name__ == "SVDQuantLinear" for mod in m.modules())  # a copy was quantized


def test_transformers_musicgen_decoder_runs_through():
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    torch.manual_seed(0)
    cfg = MusicgenDecoderConfig(vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                ffn_dim=64, num_codebooks=2, max_position_embeddings=64, pad_token_id=16,
                                bos_token_id=16)
    model = MusicgenForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    codes, memory = torch.randint(0, 16, (4, 2, 12), generator=g), torch.randn(4, 3, 32, generator=g)
    batches = code_batches(codes, special=16, batch_size=2, encoder_hidden_states=memory)
    rows, reports = token_fidelity(model, {"w8a8": preset("svd", 8, 8, group_size=16, rank=4, skip=TOKEN_SKIP),
                                           "same": _Identity()}, batches, batches, causal_lm_logits)
    report = reports["w8a8"]
    assert any(n.endswith("fc1") for n in report.quantized) and any(n.endswith("encoder_attn.k_proj") for n in report.quantized)
    assert {"lm_heads.0", "lm_heads.1"} <= set(report.skipped)
    assert len(rows) == 8 and all(np.isfinite(r["nll_increase"]) for r in rows)
    assert all(r["nll_increase"] == 0.0 and r["agreement"] == 1.0 for r in rows if r["method"] == "same")


def test_model_b_needs_a_prompt(lite):
    models, _, test = lite
    with pytest.raises(ValueError, match="audio prompt"):
        musicgen_lite_batches(test, models["b"], 0)


# ---------------------------------------------------------------------------------------------
# family_audit
# ---------------------------------------------------------------------------------------------


def _clips(families: list[set[str]], genres: list[str]):
    return [SimpleNamespace(families=f, genre=g) for f, g in zip(families, genres)]


def _rows(a: np.ndarray, b: np.ndarray) -> list[dict]:
    return ([{"method": "svdquant w4a4", "prompt": i, "mrstft": float(v)} for i, v in enumerate(a)]
            + [{"method": "rtn w4a4", "prompt": i, "mrstft": float(v)} for i, v in enumerate(b)])


def test_family_audit_groups_overlap_sizes_and_tests():
    from accelerando.bench.quant import family_audit

    rng = np.random.default_rng(0)
    n = 24
    drums = np.arange(n) < 12
    families = [({"Drums"} if d else set()) | ({"Piano"} if i % 2 else {"Strings"}) | ({"Organ"} if i == 0 else set())
                for i, d in enumerate(drums)]
    genres = ["chorale" if i % 3 else "folk_song" for i in range(n)]
    b = rng.uniform(1.0, 1.2, n)
    a = np.where(drums, 0.9, 0.5) * b * rng.uniform(0.95, 1.05, n)  # drums: a smaller gain, further from fp
    table, omnibus = family_audit(_rows(a, b), _clips(families, genres), min_group=4, n_resamples=200)
    sizes = dict(zip(table.group, table.n))
    assert sizes == {"Drums": 12, "Organ": 1, "Piano": 12, "Strings": 12, "chorale": 16, "folk_song": 8}
    assert sum(table[table.kind == "family"].n) > n  # a clip counts in every family it holds
    organ = table[table.group == "Organ"].iloc[0]
    assert not organ.tested and np.isnan(organ.p_hurt) and np.isnan(organ.p_gain_holm)
    row = table[table.group == "Drums"].iloc[0]
    assert row.tested and row.p_gain_holm < 0.01 and row.p_hurt_holm < 0.01
    assert row.hurt_side == "further from full precision" and row.gain_side == "a smaller gain over the baseline"
    # the tests are two-sided: a group on the other side is labelled by its side, not as hurt
    flipped, _ = family_audit(_rows(np.where(drums, 0.5, 0.9) * b, b), _clips(families, genres), min_group=4, n_resamples=200)
    other = flipped[flipped.group == "Drums"].iloc[0]
    assert other.p_hurt_holm < 0.01 and other.hurt_side == "closer to full precision"
    assert other.gain_side == "a larger gain over the baseline"
    assert row.log_ratio_lo <= row.log_ratio <= row.log_ratio_hi
    assert np.isclose(row.log_ratio, np.mean(np.log(a[drums] / b[drums])))
    piano = table[table.group == "Piano"].iloc[0]
    assert piano.p_gain_holm >= piano.p_gain  # Holm never lowers a p-value
    assert omnibus["genres_tested"] == 2 and 0 <= omnibus["kruskal_gain_p"] <= 1


def test_family_audit_needs_every_prompt():
    from accelerando.bench.quant import family_audit

    rows = _rows(np.ones(3), np.ones(3))[:-1]  # rtn misses prompt 2
    with pytest.raises(ValueError, match="rtn w4a4"):
        family_audit(rows, _clips([{"Piano"}] * 3, ["chorale"] * 3))


def test_holm_adjustment():
    from accelerando.bench.quant import _holm

    assert _holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert _holm([]) == []


# ---------------------------------------------------------------------------------------------
# QAT exports and the shared reference forward
# ---------------------------------------------------------------------------------------------


def test_qat_steps_are_exported_from_quant_and_the_loop_from_train():
    import accelerando.quant as quant
    from accelerando.quant import qat
    from accelerando.train import qat as train_qat

    assert quant.QATConfig is qat.QATConfig and quant.trainable_lowrank is train_qat.trainable_lowrank
    assert not hasattr(quant, "finetune_lowrank_")  # a training verb: accelerando.train.qat
    assert all(hasattr(quant, name) for name in quant.__all__)
    with pytest.raises(ValueError, match="budget"):
        train_qat.QATTrainingConfig(minutes=None, max_steps=None)
    assert quant.TOKEN_SKIP is TOKEN_SKIP  # the token models' skip list is library data


def test_reference_forward_ste_keeps_value_and_passes_gradient():
    from accelerando.quant import SVDQuantLinear

    torch.manual_seed(0)
    layer = SVDQuantLinear.from_linear(torch.nn.Linear(32, 8), 4, 4, group_size=16, rank=2)
    x = torch.randn(5, 32, requires_grad=True)
    plain = layer.forward_reference(x)
    assert torch.equal(plain, layer(x))  # the stock forward is the reference, bit for bit
    plain.sum().backward()
    g_plain, x.grad = x.grad.clone(), None
    up, down = layer.lowrank_factors()
    ste = layer.forward_reference(x, down, up, layer.residual_weight(), ste=True)
    torch.testing.assert_close(ste, plain, rtol=1e-5, atol=1e-5)
    ste.sum().backward()
    # without the STE only the low-rank branch carries a gradient to x; with it the residual does too
    expected = (up @ down + layer.residual_weight()).sum(0) / layer.smooth
    torch.testing.assert_close(x.grad[0], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(g_plain, x.grad)


def test_bench_quant_cli_refuses_unknown_qat_objective(capsys):
    from accelerando.bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["quant", "--qat", "--qat-objectives", "layer_mse"])
    assert "--qat-objectives" in capsys.readouterr().err

"""The benchmark harness: record fields, interleaving, memory, FLOPs and the CLI."""

import json
import subprocess
import sys

import pytest
import torch

from accelerando.bench import RECORD_FIELDS, PeakMemory, compare, count_flops, measure, time_call


def test_measure_record_has_promised_fields():
    rec = measure(lambda: torch.ones(64, 64) @ torch.ones(64, 64), component="matmul", audio_seconds=2.0,
                  warmup=1, repeats=3, flops=2 * 64**3, device="cpu")
    assert set(RECORD_FIELDS) <= set(rec)
    assert rec["repeats"] == 3 and rec["device"] == "cpu" and rec["threads"] == torch.get_num_threads()
    assert 0 < rec["latency_s_min"] <= rec["latency_s_median"]
    assert rec["rtf"] == pytest.approx(rec["latency_s_min"] / 2.0)
    assert rec["gflops"] == pytest.approx(2 * 64**3 / 1e9)
    assert rec["peak_mem_bytes"] > 0


def test_time_call_counts_warmup_and_stops_at_budget():
    calls = []
    times = time_call(lambda: calls.append(1), warmup=2, repeats=4, device="cpu")
    assert len(calls) == 6 and len(times) == 4
    import time

    times = time_call(lambda: time.sleep(0.05), warmup=0, repeats=10, budget_s=0.01, device="cpu")
    assert len(times) == 3  # the book's minimum of three timed calls runs, then the budget stops it
    assert len(time_call(lambda: None, warmup=0, repeats=1, budget_s=0.0, device="cpu")) == 1  # one if one is asked
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_compare_interleaves_and_reports_speedup():
    order = []
    results = compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                      rounds=3, warmup=1, baseline="a", device="cpu")
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-up, then A B A B A B
    assert results["a"]["speedup_vs_baseline"] == pytest.approx(1.0)
    assert results["b"]["repeats"] == 3
    with pytest.raises(ValueError, match="baseline"):
        compare({"a": lambda: None}, baseline="c")


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert mem.delta_bytes >= 48 * 2**20


def test_count_flops_of_a_linear_layer_on_meta():
    with torch.device("meta"):
        layer = torch.nn.Linear(256, 512)
        x = torch.randn(8, 256)
    assert count_flops(lambda: layer(x)) == 2 * 8 * 256 * 512
    with torch.device("meta"):
        q = torch.randn(1, 2, 32, 16)
    # attention is counted on meta: 2 matmuls of 2 L^2 d FLOPs per head
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == 4 * 2 * 32 * 32 * 16


def test_cli_baseline_tiny_prints_json_records():
    out = subprocess.run(
        [sys.executable, "-m", "accelerando.bench", "baseline", "--preset", "tiny", "--json",
         "--seconds", "0.5", "1", "--context-frames", "4", "8", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines()]
    components = {r["component"] for r in records}
    assert {"dit_forward", "dit_forward_cfg", "vae_decode", "text_encoder",
            "musicgen_step_kv_cache", "musicgen_step_no_cache"} <= components
    for rec in records:
        assert set(RECORD_FIELDS) <= set(rec), rec
        assert rec["threads"] == 1 and rec["latency_s_min"] > 0
    assert all(r["gflops"] > 0 for r in records if r["component"].startswith(("dit", "vae")))


def test_cli_rejects_bad_lengths():
    out = subprocess.run([sys.executable, "-m", "accelerando.bench", "baseline", "--seconds", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--seconds must be positive" in out.stderr


def test_cli_quant_refuses_the_published_model_without_weights_and_qat_on_it():
    base = [sys.executable, "-m", "accelerando.bench", "quant", "--skip-speed", "--model", "stable-audio-open"]
    out = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "needs --weights DIR" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(base + ["--weights", "/nowhere", "--qat"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "run it with --model stable-audio-lite" in out.stderr


def test_cli_quant_counts_the_compact_storage_of_the_full_size_dit():
    base = [sys.executable, "-m", "accelerando.bench", "quant", "--skip-speed", "--skip-fidelity", "--methods",
            "svdquant", "--bits", "w4a4", "--corpus", "tiny", "--json"]
    ratios = {}
    for flags in ([], ["--scale-format", "fp8", "--lowrank-bits", "8"]):
        out = subprocess.run(base + flags, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        rec = next(json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))
        assert rec["measure"] == "weight_bytes" and rec["quantized_layers"] == 240
        ratios[rec["scale_format"], rec["lowrank_bits"]] = rec["ratio"]
    assert ratios["fp8", 8] > ratios["fp16", 16] > 3  # fewer bytes for the same layers

"""accelerando.metrics on synthetic signals with known answers, against direct reference
implementations (scipy sqrtm, numpy MMD, np.polyfit), and on bad inputs."""

import json
import logging
import shutil
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.signal import butter, sosfiltfilt
from scipy.spatial.distance import cdist, pdist
from threadpoolctl import threadpool_limits

from accelerando.audio import AudioError, save_audio
from accelerando.metrics import (
    EMBEDDINGS, Estimate, MissingCheckpoint, beat_consistency, beat_f_measure, bootstrap_ci, clap_score, compare_fad,
    complex_mrstft_distance, estimate_key, fad, fad_inf, get_embedding, kad, key_score, key_stability,
    log_spectral_distance, mel_distance, mrstft_distance, paired_comparison, segmentation_f, si_sdr,
    transient_smearing_ratio,
)
from accelerando.metrics.__main__ import main as cli
from accelerando.metrics.artifacts import frame_comb_fraction
from accelerando.metrics.stats import json_safe

SR = 22050
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On the shared 2-core machine a second BLAS/torch thread stalls small eigendecompositions ~100x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# ---- synthetic music ---------------------------------------------------------------------------

def clicks(times, seconds, sr=SR) -> torch.Tensor:
    """Broadband 20 ms noise bursts (3 ms decay) at `times` (s): a click track [1, samples]."""
    y = np.zeros(int(seconds * sr))
    n = int(0.02 * sr)
    burst = np.random.default_rng(1).normal(size=n) * np.exp(-np.arange(n) / (0.003 * sr))
    for t in times:
        i = int(t * sr)
        y[i:i + n] += burst[: len(y) - i]
    return torch.from_numpy(0.5 * y / np.abs(y).max()).float()[None]


def beat_grid(bpm_at, seconds, start=0.25):
    """Beat times (s) for a tempo curve bpm_at(t)."""
    t, out = start, []
    while t < seconds - 0.1:
        out.append(t)
        t += 60.0 / bpm_at(t)
    return np.array(out)


def chords(midi_chords, seconds_each=0.5, sr=SR) -> torch.Tensor:
    """Harmonic tones (4 partials, plucked envelope), one chord after another: [1, samples]."""
    t = np.arange(int(seconds_each * sr)) / sr
    env = np.minimum(1, t / 0.01) * np.exp(-t / 0.4)
    parts = []
    for chord in midi_chords:
        f = 440 * 2 ** ((np.array(chord)[:, None] - 69) / 12)
        parts.append(env * sum(np.sin(2 * np.pi * f * k * t).sum(0) / k for k in range(1, 5)))
    y = np.concatenate(parts)
    return torch.from_numpy(0.3 * y / np.abs(y).max()).float()[None]


def progression(tonic: int, minor: bool, repeats: int = 2):
    """I-IV-V-I (major) or i-iv-V-i (minor, harmonic) triads on MIDI tonic 60 + tonic, twice."""
    if minor:
        prog = [[0, 3, 7], [5, 8, 12], [7, 11, 14], [0, 3, 7]]
    else:
        prog = [[0, 4, 7], [5, 9, 12], [7, 11, 14], [0, 4, 7]]
    return [[60 + tonic + n for n in c] for c in prog] * repeats


def lowpass(wav: torch.Tensor, cutoff: float, sr=SR) -> torch.Tensor:
    sos = butter(8, cutoff, fs=sr, output="sos")
    return torch.from_numpy(sosfiltfilt(sos, wav.numpy().astype(np.float64)).copy()).float()


# ---- distribution ------------------------------------------------------------------------------

def frechet_by_sqrtm(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_fad_equals_scipy_sqrtm_formula_and_carries_n():
    ref, gen = RNG.normal(size=(400, 24)), 1.3 * RNG.normal(size=(300, 24)) + 0.2
    est = fad(ref, gen, n_boot=50)
    assert est.value == pytest.approx(frechet_by_sqrtm(ref, gen), rel=1e-8)
    assert est.n == 300 and est.extra["n_ref"] == 400 and est.extra["dim"] == 24
    assert est.ci_low <= est.ci_high
    assert fad(ref, ref, n_boot=0).value == pytest.approx(0, abs=1e-9)


def test_fad_comparison_at_different_n_raises_or_warns():
    ref = RNG.normal(size=(200, 8))
    a, b = fad(ref, RNG.normal(size=(100, 8)), n_boot=0), fad(ref, RNG.normal(size=(150, 8)), n_boot=0)
    with pytest.raises(ValueError, match="different sample counts.*biased by n"):
        compare_fad(a, b)
    with pytest.warns(UserWarning, match="different sample counts"):
        compare_fad(a, b, strict=False)
    c = fad(ref, RNG.normal(size=(100, 8)), n_boot=0)
    assert compare_fad(a, c) == a.value - c.value


def test_fad_warns_when_vectors_are_fewer_than_dimensions(caplog):
    with caplog.at_level(logging.WARNING):
        fad(RNG.normal(size=(20, 32)), RNG.normal(size=(20, 32)), n_boot=0)
    assert "fewer vectors" in caplog.text


def test_kad_equals_direct_unbiased_mmd_and_clip_lists_agree():
    ref, gen = RNG.normal(size=(120, 10)), RNG.normal(size=(90, 10)) + 0.3
    h = np.median(pdist(ref))
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * h**2))  # noqa: E731
    m, n = len(ref), len(gen)
    krr, kgg = k(ref, ref), k(gen, gen)
    direct = 100 * ((krr.sum() - np.trace(krr)) / (m * (m - 1)) + (kgg.sum() - np.trace(kgg)) / (n * (n - 1)) - 2 * k(ref, gen).mean())
    est = kad(ref, gen, n_boot=100)
    assert est.value == pytest.approx(direct, rel=1e-9)
    assert est.extra["bandwidth"] == pytest.approx(h)
    as_clips = kad(ref, [gen[i:i + 9] for i in range(0, 90, 9)], n_boot=100)
    assert as_clips.value == pytest.approx(direct, rel=1e-9) and as_clips.ci_low <= as_clips.value <= as_clips.ci_high


def test_fad_inf_is_the_intercept_of_a_line_in_one_over_n():
    ref, gen = RNG.normal(size=(300, 6)), RNG.normal(size=(600, 6)) + 0.5
    est = fad_inf(ref, gen, steps=10, min_n=60, seed=3)
    ns = np.unique(np.linspace(60, 600, 10).astype(int))
    rng = np.random.default_rng(3)
    by_hand = [frechet_by_sqrtm(ref, gen[rng.choice(600, n, replace=True)]) for n in ns]
    assert np.allclose([p[1] for p in est.extra["points"]], by_hand, rtol=1e-7)
    slope, intercept = np.polyfit(1 / ns, by_hand, 1)
    assert est.value == pytest.approx(intercept, rel=1e-6) and est.extra["slope"] == pytest.approx(slope, rel=1e-6)
    assert est.ci_low < est.value < est.ci_high
    with pytest.raises(ValueError, match="min_n"):
        fad_inf(ref, gen[:10], min_n=20)
    with pytest.raises(ValueError, match="larger than the embedding dimension"):
        fad_inf(ref, gen[:10], min_n=5)


# ---- embeddings --------------------------------------------------------------------------------

def test_embedding_registry_and_offline_embeddings():
    assert {"mel-stats", "crepe-tiny", "crepe-full", "vggish", "clap", "encodec"} <= set(EMBEDDINGS)
    wav = chords(progression(0, False, 1))  # 2 s
    mel = get_embedding("mel-stats").embed(wav, SR)
    assert mel.shape == (3, 128) and np.isfinite(mel).all()
    crepe = get_embedding("crepe-tiny").embed(wav[:, :SR], SR)  # 1 s at 50 ms hop
    assert crepe.shape == (21, 256) and np.isfinite(crepe).all()
    assert "torchaudio" not in sys.modules
    with pytest.raises(KeyError, match="registered"):
        get_embedding("openl3")


def test_checkpoint_embeddings_name_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERANDO_CHECKPOINT_DIR", str(tmp_path))
    for name, where in (("vggish", "vggish/vggish.pth"), ("clap", "clap/config.json"), ("encodec", "encodec/config.json")):
        with pytest.raises(MissingCheckpoint, match=f"{tmp_path / where}.*never downloads"):
            get_embedding(name)


def test_vggish_loads_a_local_state_dict(tmp_path):
    from accelerando.metrics.embeddings import _VGGishNet

    torch.save(_VGGishNet().state_dict(), tmp_path / "v.pth")  # random weights, same layout
    out = get_embedding("vggish", path=tmp_path / "v.pth").embed(chords(progression(0, False, 1)), SR)
    assert out.shape == (2, 128)  # 2 s -> two 0.96 s patches


def test_encodec_loads_a_local_transformers_folder(tmp_path):
    import transformers

    config = transformers.EncodecConfig(
        sampling_rate=8000, num_filters=4, hidden_size=8, num_residual_layers=1, upsampling_ratios=[4, 2],
        codebook_size=16, codebook_dim=8, num_lstm_layers=1, target_bandwidths=[1.5],
    )
    transformers.EncodecModel(config).save_pretrained(tmp_path)
    out = get_embedding("encodec", path=tmp_path).embed(chords(progression(0, False, 1)), SR)
    assert out.shape == (2000, 8)  # 2 s at 8 kHz, hop 8


# ---- fidelity ----------------------------------------------------------------------------------

FIDELITY = (log_spectral_distance, mrstft_distance, complex_mrstft_distance, mel_distance)


def test_identical_inputs_give_ideal_values():
    wav = chords(progression(7, False, 1))
    for fn in FIDELITY:
        assert fn(wav, wav.clone(), SR) == 0.0
    assert si_sdr(wav, wav.clone(), SR) == float("inf")
    assert json_safe({"si_sdr": float("inf")}) == {"si_sdr": "inf"}


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_si_sdr_matches_added_snr(snr_db):
    s = chords(progression(2, True, 1))[0].double().numpy()
    s = s - s.mean()
    noise = RNG.normal(size=s.size)
    noise *= np.linalg.norm(s) / np.linalg.norm(noise) / 10 ** (snr_db / 20)
    got = si_sdr(torch.from_numpy(s)[None], torch.from_numpy(s + noise)[None], SR)
    assert got == pytest.approx(snr_db, abs=0.1)
    assert si_sdr(torch.from_numpy(s)[None], torch.from_numpy(0.3 * (s + noise))[None], SR) == pytest.approx(got, abs=1e-9)


def test_lowpass_moves_spectral_distances_and_transient_smearing_down():
    ref = clicks(beat_grid(lambda t: 120, 4), 4)
    dull = lowpass(ref, 2000)
    for fn in FIDELITY:
        assert fn(ref, dull, SR) > fn(ref, ref, SR) + 0.05
    assert transient_smearing_ratio(ref, ref, SR) == pytest.approx(1.0)
    assert transient_smearing_ratio(ref, dull, SR) < 0.1
    assert transient_smearing_ratio(ref, 3 * dull, SR) == pytest.approx(transient_smearing_ratio(ref, dull, SR))  # gain-free
    # Smearing in time without low-passing: a white-noise tail (amplitude decay 100 ms) spreads
    # each click's high-frequency energy past its 60 ms attack window.
    n = int(0.3 * SR)
    tail = np.random.default_rng(2).normal(size=n) * np.exp(-np.arange(n) / (0.1 * SR))
    smeared = torch.from_numpy(np.convolve(ref[0].numpy(), tail)[: ref.shape[1]]).float()[None]
    assert transient_smearing_ratio(ref, smeared / smeared.abs().max() / 2, SR) < 0.8


def test_fidelity_is_stereo_aware_and_downmixes_mismatched_channels(caplog):
    left, right = chords(progression(0, False, 1)), chords(progression(7, False, 1))
    stereo = torch.cat([left, right])
    swapped = torch.cat([right, left])
    assert log_spectral_distance(stereo, swapped, SR) > 0.1  # channel by channel
    with caplog.at_level(logging.INFO, logger="accelerando.metrics.fidelity"):
        assert log_spectral_distance(stereo, stereo.mean(0, keepdim=True), SR) == 0.0
    assert "comparing mono downmixes" in caplog.text


def test_fidelity_refuses_bad_pairs():
    wav = chords(progression(0, False, 1))
    with pytest.raises(AudioError, match="lengths differ"):
        si_sdr(wav, wav[:, :-1000], SR)
    with pytest.raises(AudioError, match="all silent"):
        si_sdr(wav, torch.zeros_like(wav), SR)
    with pytest.raises(AudioError, match="NaN or Inf"):
        mel_distance(wav, wav * float("nan"), SR)
    with pytest.raises(AudioError, match="shorter than"):
        log_spectral_distance(wav[:, :1000], wav[:, :1000], SR)


# ---- rhythm ------------------------------------------------------------------------------------

def test_beat_consistency_and_f_measure_on_click_tracks():
    seconds = 12
    steady_beats = beat_grid(lambda t: 120, seconds)
    steady = clicks(steady_beats, seconds)
    wobble_beats = beat_grid(lambda t: 120 * (1 + 0.15 * np.sin(2 * np.pi * t / 6)), seconds)
    wobble = clicks(wobble_beats, seconds)
    bcs_steady, bcs_wobble = beat_consistency(steady, SR), beat_consistency(wobble, SR)
    assert bcs_steady > 0.97
    assert bcs_wobble < bcs_steady - 0.04
    assert beat_f_measure(steady, SR, steady_beats) == 1.0
    assert beat_f_measure(wobble, SR, steady_beats) < 0.6  # drifting beats miss a steady grid
    with pytest.raises(ValueError, match="no reference beats"):
        beat_f_measure(steady, SR, [])


def test_short_clips_give_the_logged_sentinel(caplog):
    short = clicks([0.1, 0.6, 1.1], 2)
    with caplog.at_level(logging.WARNING):
        assert beat_consistency(short, SR, name="short.wav") is None
        assert key_stability(short, SR, name="short.wav") is None
    assert "beat_consistency undefined for short.wav" in caplog.text and "shorter than" in caplog.text
    assert "key_stability undefined for short.wav" in caplog.text
    drone = chords([[60, 64, 67]], 6.0)  # one chord held for 6 s: no tempo to be steady
    with caplog.at_level(logging.WARNING):
        assert beat_consistency(drone, SR, name="drone.wav") is None
    assert "no steady pulse" in caplog.text


# ---- tonality and structure --------------------------------------------------------------------

@pytest.mark.parametrize("tonic, minor, name", [(7, False, "G major"), (2, True, "D minor")])
def test_key_found_scores_one_and_is_stable(tonic, minor, name):
    wav = chords(progression(tonic, minor, 3))  # 6 s
    assert estimate_key(wav, SR) == name
    assert key_score(wav, SR, name) == 1.0
    assert key_stability(wav, SR, ref_key=name) == 1.0


def test_key_stability_drops_across_a_modulation_and_scale_is_found():
    scale = [[60 + s] for s in (0, 2, 4, 5, 7, 9, 11, 12, 11, 9, 7, 5, 4, 2, 0)]
    assert estimate_key(chords(scale, 0.4), SR) == "C major"
    modulating = torch.cat([chords(progression(0, False, 3)), chords(progression(6, False, 3))], dim=1)
    ksi = key_stability(modulating, SR, ref_key="C major")
    assert 0.2 < ksi < 0.7
    assert key_score(chords(progression(7, False, 3)), SR, "C major") == 0.5  # a fifth away
    b_flat = chords(progression(10, False, 3))
    assert key_stability(b_flat, SR, ref_key="Bb major") == key_stability(b_flat, SR, ref_key="A# major") == 1.0
    with pytest.raises(ValueError, match="H"):
        key_stability(b_flat, SR, ref_key="H major")


def test_segmentation_finds_section_boundaries():
    rng = np.random.default_rng(3)
    a = chords(progression(0, False, 2))  # 4 s each
    noise = torch.from_numpy(0.05 * rng.normal(size=a.shape[1])).float()[None]
    b = chords(progression(8, True, 2)) ** 3 * 8  # different key and timbre
    wav = torch.cat([a, a, noise, noise, b, b, a, a], dim=1)  # sections at 8, 16, 24 s
    scores = segmentation_f(wav, SR, [0.0, 8.0, 16.0, 24.0, 32.0])
    assert scores[3.0] == 1.0 and scores[0.5] >= 2 / 3
    assert segmentation_f(wav, SR, [0.0, 32.0]) is None  # no interior boundary: sentinel


# ---- statistics --------------------------------------------------------------------------------

def test_bootstrap_is_seeded_skips_sentinels_and_refuses_nan():
    values = [1.0, 2.0, None, 4.0, 3.0]
    a, b = bootstrap_ci(values, seed=1), bootstrap_ci(values, seed=1)
    assert a == b and a.value == 2.5 and a.n == 4 and a.n_skipped == 1
    assert a.ci_low < 2.5 < a.ci_high
    assert bootstrap_ci([float("inf"), float("inf")]).to_dict()["value"] == "inf"
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="no valid values"):
        bootstrap_ci([None, None])


def test_paired_comparison_detects_a_shift_and_handles_ties():
    b = RNG.normal(size=30)
    res = paired_comparison(list(b + 1.0 + 0.1 * RNG.normal(size=30)), list(b))
    assert res.mean_diff.value == pytest.approx(1.0, abs=0.1) and res.wilcoxon_p < 1e-4 and res.n == 30
    assert res.mean_diff.ci_low > 0.9
    tie = paired_comparison([1.0, float("inf")], [1.0, float("inf")])
    assert tie.wilcoxon_p == 1.0 and tie.mean_diff.value == 0.0
    assert isinstance(res.mean_diff, Estimate) and json.dumps(res.to_dict())


# ---- hooks -------------------------------------------------------------------------------------

def test_clap_score_hook(caplog):
    wav = chords(progression(0, False, 1))
    with caplog.at_level(logging.WARNING):
        assert clap_score([wav], SR, ["piano chords"]) is None
    assert "CLAP score skipped" in caplog.text

    class Stub:
        def embed_audio(self, wav, sr):
            return np.array([1.0, 0.0])

        def embed_text(self, text):
            return np.array([1.0, 1.0])

    assert clap_score([wav, wav], SR, ["a", "b"], Stub()) == pytest.approx([2**-0.5] * 2)


# ---- command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i, (tonic, minor, bpm) in enumerate([(0, False, 120), (7, False, 100), (2, True, 90)]):
        wav = chords(progression(tonic, minor, 3)) + clicks(beat_grid(lambda t, bpm=bpm: bpm, 6), 6)
        save_audio(root / "ref" / f"clip{i}.wav", wav / 2, SR)
    shutil.copytree(root / "ref", root / "gen")
    return root


def test_cli_on_identical_folders_gives_ideal_fidelity(folders, tmp_path, capsys):
    out = tmp_path / "m.json"
    code = cli(["--ref", str(folders / "ref"), "--gen", str(folders / "gen"), "--json", "--out", str(out),
                "--embeddings", "mel-stats", "vggish", "--sample-rate", str(SR), "--n-boot", "200", "--n-boot-distribution", "20"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    fid = result["fidelity"]
    for metric in ("lsd", "mrstft", "complex_mrstft", "mel_distance"):
        assert fid[metric]["value"] == 0.0 and fid[metric]["n"] == 3
    assert fid["si_sdr_db"]["value"] == "inf" and fid["transient_smearing_ratio"]["value"] == 1.0
    assert result["distribution"]["mel-stats"]["fad"]["value"] == pytest.approx(0, abs=1e-6)
    assert result["distribution"]["mel-stats"]["fad"]["extra"]["n_ref"] == result["distribution"]["mel-stats"]["fad"]["n"]
    assert "never downloads" in result["distribution"]["vggish"]["skipped"]
    mus = result["musical"]
    assert mus["key_score_mirex"]["value"] == 1.0 and mus["beat_f_measure"]["value"] == 1.0
    assert mus["beat_consistency"]["value"] == mus["beat_consistency_reference"]["value"]
    assert result["paired"]["beat_consistency_gen_minus_ref"]["wilcoxon_p"] == 1.0


def test_cli_reads_a_corpus_manifest_as_ground_truth(folders, tmp_path, capsys):
    keys = ["C major", "G major", "D minor"]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": f"clip{i}", "key": {"name": k}, "beats": [], "sections": [[0.0, "A"]]})
                                   for i, k in enumerate(keys)) + "\n")
    code = cli(["--ref", str(folders / "ref"), "--gen", str(folders / "gen"), "--json", "--annotations", str(manifest),
                "--embeddings", "mel-stats", "--sample-rate", str(SR), "--n-boot", "100", "--n-boot-distribution", "10"])
    mus = json.loads(capsys.readouterr().out)["musical"]
    assert code == 0 and mus["key_score_mirex"]["value"] == 1.0 and mus["key_score_mirex"]["n"] == 3
    assert "no valid values" in mus["beat_f_measure"]["skipped"]  # empty beat lists: undefined, logged
    assert "no valid values" in mus["segmentation_f_3s"]["skipped"]  # one section: no interior boundary


def test_cli_lists_unmatched_files(folders, tmp_path, capsys):
    gen = tmp_path / "gen"
    shutil.copytree(folders / "gen", gen)
    (gen / "clip1.wav").unlink()
    (gen / "clip2.wav").rename(gen / "other.wav")
    code = cli(["--ref", str(folders / "ref"), "--gen", str(gen), "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert "has 2 files for 3 references" in err and "no generated file for: clip1, clip2" in err
    assert "no reference for: other" in err and "--unpaired" in err


def test_cli_leaves_out_invalid_clips_with_their_reason(folders, tmp_path, capsys):
    gen = tmp_path / "gen"
    shutil.copytree(folders / "gen", gen)
    save_audio(gen / "clip0.wav", torch.zeros(1, 6 * SR), SR)  # a silent generation
    code = cli(["--ref", str(folders / "ref"), "--gen", str(gen), "--json", "--unpaired", "--no-musical",
                "--embeddings", "mel-stats", "--sample-rate", str(SR), "--n-boot-distribution", "10"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and "all silent" in result["invalid"]["gen/clip0"]
    assert result["clips"] == {"reference": 3, "generated": 2, "pairs": 0} and "fidelity" not in result


def test_frame_comb_fraction_tells_frame_periodic_output_from_music():
    sr, hop = 22050, 1024
    rate = sr / hop  # 21.53 Hz
    t = np.arange(8 * sr) / sr
    rng = np.random.default_rng(0)
    grain = rng.standard_normal(hop)
    tiled = np.tile(grain, 8 * sr // hop + 1)[: len(t)]  # every frame rendered alike: all energy on the comb
    on_line = np.sin(2 * np.pi * 24 * rate * t)  # 516.8 Hz, a comb line
    a4 = np.sin(2 * np.pi * 440.0 * t)  # 9.3 Hz from the nearest line
    noise = rng.standard_normal(len(t))
    frac = lambda x: frame_comb_fraction(x[None].astype(np.float32) * 0.1, sr, rate)  # noqa: E731
    assert frac(tiled) > 0.95 and frac(on_line) > 0.95
    assert frac(a4) < 0.01
    assert abs(frac(noise) - 4.0 / rate) < 0.03  # +-2 Hz of every 21.5 Hz: the chance share
    # nothing in the band (a 5 kHz tone against the default 60-3000 Hz band)
    assert frame_comb_fraction(np.sin(2 * np.pi * 5000 * t)[None].astype(np.float32), sr, rate) is None
    with pytest.raises(ValueError, match="Nyquist"):
        frame_comb_fraction(a4[None].astype(np.float32), sr, rate, band_hz=(60.0, 20000.0))
    with pytest.raises(ValueError, match="tol_hz"):
        frame_comb_fraction(a4[None].astype(np.float32), sr, 3.0)
    with pytest.raises(AudioError, match="NaN"):
        frame_comb_fraction(np.full((1, sr), np.nan, dtype=np.float32), sr, rate)
    with pytest.raises(AudioError, match="shorter"):  # under 2 / tol_hz = 1 s: the window smears the lines
        frame_comb_fraction(a4[None, : sr // 2].astype(np.float32), sr, rate)


def _accented_clicks(beats, per_beat, seconds, weak=0.12) -> torch.Tensor:
    """Loud clicks on `beats`, quiet ones on the `per_beat - 1` subdivisions between them."""
    period = float(np.diff(beats).mean())
    subs = [b + k * period / per_beat for b in beats for k in range(1, per_beat)]
    return clicks(beats, seconds) + weak * clicks([t for t in subs if t < seconds - 0.05], seconds)


def test_beat_tracker_on_known_tempo_compound_metre_and_slow_tempo():
    """The failures of the first tracker (every local maximum of the PLP pulse above 10 % of its
    peak a beat): subdivisions became beats, and slow tempi were doubled."""
    from accelerando.metrics import estimate_beats
    from accelerando.metrics.adherence import estimate_tempo, tempo_accuracy

    seconds = 12
    steady = beat_grid(lambda t: 100, seconds)
    assert beat_f_measure(clicks(steady, seconds), SR, steady) > 0.95
    assert tempo_accuracy(estimate_tempo(clicks(steady, seconds), SR), 100)[0] == 1.0

    slow = beat_grid(lambda t: 50, seconds)
    assert beat_f_measure(clicks(slow, seconds), SR, slow) > 0.8  # the peak rule found 2 beats per beat: 0.50
    assert tempo_accuracy(estimate_tempo(clicks(slow, seconds), SR), 50)[0] == 1.0

    compound = beat_grid(lambda t: 60, seconds)  # 6/8: dotted-quarter beats, three eighths each
    est = estimate_beats(_accented_clicks(compound, 3, seconds), SR)
    assert len(est) <= 2.2 * len(compound)  # the peak rule put a beat on every eighth: 3 per beat
    assert beat_f_measure(_accented_clicks(compound, 3, seconds), SR, compound) > 0.6  # peak rule: 0.50

"""Pieces shared by the model builders: the T5 text-encoder configs, a stand-in tokenizer,
seeded (or meta) construction, the local-checkpoint check, and a parameter table.

Stable Audio Open and MusicGen both condition on the encoder of T5-base, so its config lives
here once. Nothing in this file downloads anything: weights come from a local directory or
are random.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from torch import nn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# T5-base (google-t5/t5-base config.json): the text encoder of Stable Audio Open 1.0
# (stable-audio-tools model_config.json: conditioning "prompt", type "t5", t5_model_name
# "t5-base", max_length 128) and of MusicGen (transformers convert_musicgen_transformers.py loads
# T5EncoderModel.from_pretrained("t5-base")). Only the encoder stack is built (T5EncoderModel).
T5_BASE = dict(
    vocab_size=32128,  # 32,100 sentencepiece pieces + extra ids, padded to a multiple of 128
    d_model=768,
    d_kv=64,
    d_ff=3072,
    num_layers=12,
    num_heads=12,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj="relu",  # T5 v1.0: ReLU, not gated
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    n_positions=512,
)

# The shape of google-t5/t5-small (6 layers, 512 wide, 8 heads, d_ff 2048): the "small" presets.
T5_SMALL = {**T5_BASE, "d_model": 512, "d_ff": 2048, "num_layers": 6, "num_heads": 8}

# Test-sized T5 that keeps the T5 vocabulary, so any T5 token id stays valid.
T5_TINY = {**T5_BASE, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}

# T5 special ids: <pad>=0, </s>=1, <unk>=2 (t5-base tokenizer).
_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


def byte_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level stand-in for the T5 sentencepiece tokenizer, which cannot be downloaded here.

    Ids 0, 1, 2 are <pad>, </s>, <unk> as in T5; the 256 bytes follow (ids 3..258, all inside
    T5's 32,128-entry embedding). Every text maps to one token per UTF-8 byte plus </s>. With
    random weights any tokenizer with valid ids serves; with real T5 weights this one gives
    meaningless embeddings, so load the published tokenizer with the weights instead.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS + alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    # No merges and no regex split: one token per byte, spaces included.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    # T5 appends </s> to every sequence.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


@contextlib.contextmanager
def seeded_build(seed: int, device: str | torch.device) -> Iterator[None]:
    """Context for building modules with reproducible random weights.

    Forks the CPU RNG (the caller's stream is left untouched) and seeds it. On device "meta"
    tensors get shapes but no storage, so a 1 B-parameter model is built in well under a second;
    on any other device modules are built on CPU and moved afterwards, so the same seed gives the
    same weights whatever the device.

    Also quiets two warnings the stock classes raise on every build, which would otherwise fill
    each chapter's output: the Oobleck VAE's use of the deprecated `weight_norm`, and transformers'
    complaint that MusicGen's published pad/bos id 2048 lies outside its 2048-token vocabulary (it
    is the extra start token, embedded in a table of 2049 rows).
    """
    meta = torch.device(device).type == "meta"
    verbosity = transformers.logging.get_verbosity()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)
        transformers.logging.set_verbosity_error()
        torch.manual_seed(seed)
        try:
            with torch.device("meta") if meta else contextlib.nullcontext():
                yield
        finally:
            transformers.logging.set_verbosity(verbosity)


def check_preset(preset: str, presets: tuple[str, ...], model: str) -> None:
    """Raise ValueError naming the valid presets if `preset` is not one of them."""
    if preset not in presets:
        raise ValueError(f"unknown {model} preset {preset!r}; valid presets: {', '.join(presets)}")


def check_local_weights(path: str | Path, layout: dict[str, list[str]], repo_id: str) -> Path:
    """Check that `path` holds a local copy of `repo_id` before anything is loaded.

    `layout` maps a subfolder ("" for the top) to the files it must hold; an entry "a|b" is
    satisfied by any file matching glob a or glob b. Raises FileNotFoundError listing every
    missing item, with the fix. Returns the resolved directory.
    """
    root = Path(path).expanduser()
    expected = "\n".join(
        f"  {sub + '/' if sub else ''}{' + '.join(f.replace('|', ' or ') for f in files)}"
        for sub, files in layout.items()
    )
    fix = (
        f"Download {repo_id} on a machine with access (e.g. `huggingface-cli download {repo_id} "
        f"--local-dir DIR`), copy DIR here and pass weights=DIR, or pass weights=None for random "
        f"weights. No weights are ever downloaded by this library."
    )
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"weights directory {root} {what}.\nExpected a local copy of {repo_id} laid out as:\n"
            f"{expected}\n{fix}"
        )
    missing = []
    for sub, files in layout.items():
        folder = root / sub
        if not folder.is_dir():
            missing.append(f"{sub}/ (whole folder)")
            continue
        for alternatives in files:
            found = (p for pattern in alternatives.split("|") for p in folder.glob(pattern))
            if not any(p.is_file() for p in found):
                missing.append(f"{sub + '/' if sub else ''}{alternatives.replace('|', ' or ')}")
    if missing:
        raise FileNotFoundError(
            f"incomplete weights directory {root}: missing {len(missing)} item(s):\n"
            + "\n".join(f"  {m}" for m in missing)
            + f"\nExpected a local copy of {repo_id} laid out as:\n{expected}\n{fix}"
        )
    return root


def parameter_table(module_dict: dict[str, nn.Module]) -> list[dict]:
    """One row per component: parameter count and the bytes its weights take in fp32 and fp16.

    Counts each tensor once per component (tied weights are shared) and works on meta tensors,
    so full-size models can be tabulated without allocating them. Add a total with
    `sum(row["params"] for row in rows)`.
    """
    rows = []
    for name, module in module_dict.items():
        n = sum(p.numel() for p in module.parameters())
        rows.append({"component": name, "params": n, "fp32_bytes": 4 * n, "fp16_bytes": 2 * n})
    return rows

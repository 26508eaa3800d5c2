"""Linguistic encoder: a Hugging Face encoder (RoBERTa-base for the paper), loaded from local files only.

Long and short expressions are tokenized and encoded in one batched call. Frozen by default, as in MTTR and SgMg:
no gradients; its dropout follows the model's train/eval mode as theirs does (`text.dropout_when_frozen`; off:
kept in eval mode). Texts are lowercased and their whitespace runs collapsed first (MTTR's and SgMg's clean-up,
`text.lowercase`, `text.collapse_whitespace`); `as_written` skips that (SgMg's whole-video inference). With
`keep_pooler` the encoder's pooled output (RoBERTa's pooler, SgMg's sentence feature) comes back too.
With `pretrained = False` (the `tiny` preset, the FLOPs benchmark) the encoder is a randomly
initialised RoBERTa of the configured dims with a byte-level BPE tokenizer trained on the fly.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, RobertaConfig, RobertaModel

from losh.errors import TextEncoderMissing
from losh.models.shared.tiny_tokenizer import builtin_corpus, train_bpe_tokenizer, wrap_tokenizer_json
from losh.schemas.config import TextConfig


def _how_to_provide(name: str) -> str:
    hf_home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return (
        f"The text encoder {name!r} (model and tokenizer files) is not available locally, and nothing is "
        "downloaded. Provide it in one of these ways:\n"
        f"  1. a local directory holding config.json, the weights (model.safetensors or pytorch_model.bin) and "
        "the tokenizer files (vocab.json, merges.txt or tokenizer.json): set text.encoder to its path;\n"
        f"  2. the Hugging Face cache: on a machine with internet run `hf download {name}` "
        f"(older hubs: `huggingface-cli download {name}`; or `python -c \"from transformers import AutoModel, "
        f"AutoTokenizer; AutoModel.from_pretrained('{name}'); AutoTokenizer.from_pretrained('{name}')\"`), "
        "then copy the cache folder to this machine; it is looked "
        f"up under HF_HOME (now {hf_home}).\n"
        "For tests and demos without it, use the `tiny` preset (text.pretrained = false)."
    )


class EncodedTexts(NamedTuple):
    """Token features (N, S, hidden) and padding masks (N, S, True on padding) of the long and short texts, and
    their pooled features (N, hidden) where the encoder keeps its pooler."""

    long: Tensor
    long_padding: Tensor
    short: Tensor | None = None
    short_padding: Tensor | None = None
    long_pooled: Tensor | None = None
    short_pooled: Tensor | None = None


class TextEncoder(nn.Module):
    """texts -> `EncodedTexts`."""

    def __init__(self, config: TextConfig, keep_pooler: bool = False) -> None:
        super().__init__()
        self.frozen = config.freeze
        self.dropout_when_frozen = config.dropout_when_frozen
        self.max_tokens = config.max_tokens
        self.lowercase = config.lowercase
        self.collapse_whitespace = config.collapse_whitespace
        self.keep_pooler = keep_pooler
        self.trained_tokenizer = not config.pretrained
        self.vocab_size = config.vocab_size
        if config.pretrained:
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(config.encoder, local_files_only=True)
                self.model = AutoModel.from_pretrained(config.encoder, local_files_only=True)
            except (OSError, ValueError) as error:
                raise TextEncoderMissing(_how_to_provide(config.encoder)) from error
            if getattr(self.model, "pooler", None) is not None and not keep_pooler:
                self.model.pooler = None  # never used; unused parameters would get no gradient
        else:
            self.model = RobertaModel(RobertaConfig(
                vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                intermediate_size=config.intermediate_size, max_position_embeddings=config.max_tokens + 2,
                type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                layer_norm_eps=config.layer_norm_eps,
            ), add_pooling_layer=keep_pooler)
            self.fit_tokenizer(())
        self.hidden_size = self.model.config.hidden_size
        if self.frozen:
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            if not self.dropout_when_frozen:
                self.model.eval()

    def fit_tokenizer(self, texts: Sequence[str]) -> None:
        """Retrains the on-the-fly tokenizer on the built-in word list plus `texts` (e.g. the training
        expressions). Only for randomly initialised encoders; call before training."""
        if not self.trained_tokenizer:
            raise RuntimeError("fit_tokenizer is for randomly initialised text encoders (text.pretrained = false)")
        tokenizer = train_bpe_tokenizer([*builtin_corpus(), *self._normalise(texts)], self.vocab_size,
                                        self.max_tokens)
        self._tokenizer_json = tokenizer.backend_tokenizer.to_str()
        self.tokenizer = tokenizer

    def get_extra_state(self) -> dict:
        # a checkpoint carries the trained tokenizer, so it encodes texts exactly as in training
        return {"tokenizer_json": self._tokenizer_json if self.trained_tokenizer else None}

    def set_extra_state(self, state: dict) -> None:
        if state and state.get("tokenizer_json") and self.trained_tokenizer:
            self._tokenizer_json = state["tokenizer_json"]
            self.tokenizer = wrap_tokenizer_json(self._tokenizer_json, self.max_tokens)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen and not self.dropout_when_frozen:
            self.model.eval()
        return self

    def _normalise(self, texts: Sequence[str], as_written: bool = False) -> list[str]:
        return list(texts) if as_written else [normalise_text(t, self.lowercase, self.collapse_whitespace)
                                                for t in texts]

    def batch_tokenizer(self, with_short: bool) -> "BatchTokenizer":
        """What the training loader's collate runs on each batch's texts (long, then short with `with_short`): the
        token ids `forward(..., tokens=)` takes, made in the loader's workers and pinned with the batch."""
        return BatchTokenizer(self.tokenizer, self.lowercase, self.collapse_whitespace, self.max_tokens, with_short)

    def encode(self, texts: Sequence[str], tokens: dict[str, Tensor] | None = None,
               as_written: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(token features, padding, pooled features or None) of `texts`, or of their given `tokens`."""
        device = next(self.model.parameters()).device
        if tokens is None:
            tokens = tokenize(self.tokenizer, self._normalise(texts, as_written), self.max_tokens)
        elif tokens["input_ids"].shape[0] != len(texts):
            raise ValueError(f"{tokens['input_ids'].shape[0]} tokenized texts for {len(texts)} texts")
        # host -> device without waiting for the GPU (pinned by the loader, or small)
        tokens = {k: tokens[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask")}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(**tokens)
        pooled = out.pooler_output if self.keep_pooler else None
        return out.last_hidden_state, tokens["attention_mask"] == 0, pooled

    def forward(self, long_texts: Sequence[str], short_texts: Sequence[str] | None = None,
                tokens: dict[str, Tensor] | None = None, as_written: bool = False) -> EncodedTexts:
        """Long and (optionally) short texts in one batched call, padded to the longest of both. `tokens`: their
        token ids as `batch_tokenizer` made them (else they are tokenized here); `as_written`: no clean-up."""
        if short_texts is None:
            hidden, padding, pooled = self.encode(long_texts, tokens, as_written)
            return EncodedTexts(hidden, padding, long_pooled=pooled)
        if len(short_texts) != len(long_texts):
            raise ValueError(f"{len(long_texts)} long texts but {len(short_texts)} short texts")
        hidden, padding, pooled = self.encode([*long_texts, *short_texts], tokens, as_written)
        n = len(long_texts)
        return EncodedTexts(hidden[:n], padding[:n], hidden[n:], padding[n:],
                            pooled[:n] if pooled is not None else None, pooled[n:] if pooled is not None else None)


def normalise_text(text: str, lowercase: bool, collapse_whitespace: bool) -> str:
    """MTTR's and SgMg's clean-up of an expression: `" ".join(text.lower().split())` (each part a switch)."""
    if collapse_whitespace:
        text = " ".join(text.split())
    return text.lower() if lowercase else text


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> dict[str, Tensor]:
    """input_ids and attention_mask (N, S) of `texts` (already normalised), padded to the longest."""
    tokens = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


class BatchTokenizer:
    """A batch's texts -> token ids, as `TextEncoder.encode` would make them (picklable: it runs in the loader's
    workers)."""

    def __init__(self, tokenizer, lowercase: bool, collapse_whitespace: bool, max_tokens: int, with_short: bool
                 ) -> None:
        self.tokenizer, self.lowercase, self.collapse_whitespace = tokenizer, lowercase, collapse_whitespace
        self.max_tokens, self.with_short = max_tokens, with_short

    def __call__(self, long_texts: Sequence[str], short_texts: Sequence[str]) -> dict[str, Tensor]:
        texts = [*long_texts, *short_texts] if self.with_short else list(long_texts)
        return tokenize(self.tokenizer, [normalise_text(t, self.lowercase, self.collapse_whitespace) for t in texts],
                        self.max_tokens)

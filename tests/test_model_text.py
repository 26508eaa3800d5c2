"""The text encoder: frozen, one batched call for long and short texts, offline errors, tiny tokenizer."""
from dataclasses import replace

import pytest
import torch

from losh.errors import TextEncoderMissing
from losh.models.shared.text_encoder import TextEncoder
from losh.models.shared.tiny_tokenizer import builtin_corpus, train_bpe_tokenizer
from losh.schemas.config import TextConfig
from losh.schemas.presets import get_config

TINY = replace(get_config("tiny").text, freeze=True)   # the paper's frozen encoder, in tiny dims


def test_long_and_short_texts_are_encoded_in_one_call():
    encoder = TextEncoder(TINY).eval()
    calls = []
    encoder.model.register_forward_pre_hook(lambda _, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    long_texts = ["the big red circle is moving to the left", "a dog"]
    short_texts = ["the big red circle", "a dog"]
    long, long_pad, short, short_pad = encoder(long_texts, short_texts)[:4]
    assert len(calls) == 1 and calls[0][0] == 4
    assert long.shape[:2] == short.shape[:2] == long_pad.shape == short_pad.shape
    assert long.shape[-1] == TINY.hidden_size
    # padding marks exactly the tokens beyond each text: <s> + words + </s>
    assert (~long_pad).sum(1).tolist() == [11, 4] and (~short_pad).sum(1).tolist() == [6, 4]
    alone, _, _ = encoder.encode(short_texts[:1])
    assert torch.allclose(alone[0, :6], short[0, :6], atol=1e-5)  # padding does not change the features


def test_frozen_encoder_has_no_gradients_and_its_dropout_follows_the_switch():
    encoder = TextEncoder(TINY).eval()
    encoder.train()
    assert encoder.model.training  # as MTTR/SgMg: frozen weights, dropout still on in training
    assert all(not p.requires_grad for p in encoder.parameters())
    features = encoder(["a red circle"]).long
    assert not features.requires_grad
    still = TextEncoder(replace(TINY, dropout_when_frozen=False)).train()
    assert not still.model.training
    assert torch.equal(still(["a red circle"]).long, still(["a red circle"]).long)
    trainable = TextEncoder(TextConfig(**{**TINY.__dict__, "freeze": False})).train()
    assert trainable.model.training and trainable(["a red circle"])[0].requires_grad


def test_tiny_tokenizer_is_deterministic_and_keeps_words_whole():
    first = train_bpe_tokenizer(builtin_corpus(), 1000, 32)
    second = train_bpe_tokenizer(builtin_corpus(), 1000, 32)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    tokens = first.tokenize("The big red circle is moving to the left")
    assert [t.lstrip("\u0120") for t in tokens] == "the big red circle is moving to the left".split()
    assert (first.bos_token_id, first.pad_token_id, first.eos_token_id) == (0, 1, 2)  # RoBERTa's ids
    assert first.tokenize("zebra")  # unseen words still tokenize (bytes), never <unk>
    assert first.unk_token_id not in first("zebra")["input_ids"]


def test_checkpoint_carries_the_trained_tokenizer():
    encoder = TextEncoder(TINY).eval()
    encoder.fit_tokenizer(["the zebracorn galloping", "a zebracorn"] * 20)
    assert encoder.tokenizer.tokenize("zebracorn") == ["\u0120zebracorn"]
    restored = TextEncoder(TINY).eval()
    assert restored.tokenizer.tokenize("zebracorn") != ["\u0120zebracorn"]
    restored.load_state_dict(encoder.state_dict())
    assert restored.tokenizer.tokenize("zebracorn") == ["\u0120zebracorn"]
    assert torch.equal(restored(["a zebracorn"])[0], encoder(["a zebracorn"])[0])


def test_missing_pretrained_encoder_says_how_to_provide_it(tmp_path):
    with pytest.raises(TextEncoderMissing, match="HF_HOME") as error:
        TextEncoder(TextConfig(encoder=str(tmp_path / "roberta-base")))
    assert "set text.encoder to its path" in str(error.value)


def test_expressions_are_lowercased_as_mttr_unless_switched_off():
    seen = []

    def capture(encoder):
        tokenizer = encoder.tokenizer
        encoder.tokenizer = lambda texts, **kw: seen.append(list(texts)) or tokenizer(texts, **kw)
        return encoder

    torch.manual_seed(0)
    encoder = capture(TextEncoder(TINY).eval())
    with torch.no_grad():
        upper = encoder.encode(["The Man in  white T-shirt "])[0]
        lower = encoder.encode(["the man in white t-shirt"])[0]
    assert torch.equal(upper, lower)
    assert seen == [["the man in white t-shirt"]] * 2        # what a cased tokenizer (RoBERTa's) gets, spaces collapsed
    seen.clear()
    cased = capture(TextEncoder(replace(TINY, lowercase=False)).eval())
    with torch.no_grad():
        cased.encode(["The Man in white T-shirt"])
    assert seen == [["The Man in white T-shirt"]]

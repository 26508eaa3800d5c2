"""Texts are tokenized in the training loader's collate (pinned with the batch), as the model would tokenize them."""
import torch
from torch.utils.data import DataLoader

from losh.data.dataset import RVOSDataset, collate
from losh.models.registry import build_model
from losh.schemas.presets import get_config


def test_the_loaders_token_ids_are_the_models_and_give_the_same_outputs(prepared):
    torch.manual_seed(0)
    model = build_model(get_config("tiny:wo-fbc")).eval()
    dataset = RVOSDataset(prepared, "train")
    tokenize = model.text_encoder.batch_tokenizer(with_short=True)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=lambda items: collate(items, tokenize=tokenize))))
    tokens = batch["text_tokens"]
    assert tokens["input_ids"].shape[0] == 6                       # 3 long, then 3 short texts
    with torch.no_grad():
        own = model.text_encoder(batch["long_text"], batch["short_text"])
        given = model.text_encoder(batch["long_text"], batch["short_text"], tokens=tokens)
    for a, b in zip(own, given):
        assert (a is None and b is None) or torch.equal(a, b)


def test_without_short_text_only_the_long_texts_are_tokenized(prepared):
    model = build_model(get_config("tiny:baseline")).eval()
    tokens = model.text_encoder.batch_tokenizer(with_short=False)(["a red circle", "the blue square"], ["x", "y"])
    assert tokens["input_ids"].shape[0] == 2

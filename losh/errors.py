"""Errors for model assets that must be provided locally (nothing is ever downloaded)."""
from __future__ import annotations


class AssetMissing(FileNotFoundError):
    """A file the model needs (pretrained weights, a text encoder) is not on this machine."""


class WeightsMissing(AssetMissing):
    """Pretrained visual-encoder weights are required by the config but were not given or not found."""


class TextEncoderMissing(AssetMissing):
    """The Hugging Face text encoder (model or tokenizer files) is not available offline."""

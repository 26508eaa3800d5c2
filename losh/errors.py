"""Errors the toolkit raises for a user to act on (missing local assets, bad inputs, non-finite outputs)."""
from __future__ import annotations


class AssetMissing(FileNotFoundError):
    """A file the model needs (pretrained weights, a text encoder) is not on this machine."""


class WeightsMissing(AssetMissing):
    """Pretrained visual-encoder weights are required by the config but were not given or not found."""


class TextEncoderMissing(AssetMissing):
    """The Hugging Face text encoder (model or tokenizer files) is not available offline."""


class NonFiniteOutputs(FloatingPointError):
    """The model's predictions hold NaN/inf, so they cannot be matched to the targets; `terms` holds the
    loss terms that could still be computed and the count of non-finite values of each output."""

    def __init__(self, message: str, terms: dict[str, float]) -> None:
        super().__init__(message)
        self.terms = terms


class PredictError(ValueError):
    """A bad input to `losh predict` (video, frames, checkpoint, output folder): the message says which and why."""


class PredictUsageError(PredictError):
    """The call itself is wrong (no expression, an option that does not apply)."""


def first_line(error: BaseException) -> str:
    """An exception's message in one line (its class name where it has none)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

"""The short text inference derives from a long expression (paper 3.8: at inference only the long expression is
given): the machine short text of the rule and tagger the model was trained with (its config's
`short_text_rule` / `short_text_tagger`; a model trained on manual short text gets the subject rule's, the
closest to human short texts)."""
from __future__ import annotations

from collections.abc import Sequence

from losh.schemas.config import ModelConfig


def inference_tagger(config: ModelConfig) -> tuple[str, str, str | None]:
    """(tagger, rule, note) inference uses for `config`: its own; spaCy's tagger with the same rule where it names
    NLTK's and NLTK's tagger data is not installed (said in the note)."""
    from losh.pipeline.shorten import available_tagger

    tagger, note = available_tagger(config.short_text_tagger, config.short_text_rule)
    return tagger, config.short_text_rule, note


def tagger_short_texts(texts: Sequence[str], config: ModelConfig) -> tuple[list[str], str]:
    """The short text of each expression as `config`'s model was trained on (the long text where the tagger finds
    none), and where it comes from ("spacy/subject", with a fallback note). Raises
    `losh.pipeline.shorten.TaggerUnavailable` when no tagger is installed."""
    from losh.pipeline.shorten import Shortener

    tagger, rule, note = inference_tagger(config)
    shorts = Shortener(tagger=tagger, rule=rule).shorten_many(list(texts))
    source = f"{tagger}/{rule}" + (f"; {note}" if note else "")
    return [short.strip() or text for short, text in zip(shorts, texts)], source

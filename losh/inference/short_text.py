"""The short text inference derives from a long expression (paper 3.8: at inference only the long expression is
given): the tagger's, by the rule LoSh's machine short text uses."""
from __future__ import annotations

from collections.abc import Sequence

TAGGER, RULE = "spacy", "subject"
INFERENCE_TAGGER = f"{TAGGER}/{RULE}"


def tagger_short_texts(texts: Sequence[str]) -> list[str]:
    """The tagger's short text of each expression; the long text itself where the tagger finds none. Raises
    `losh.pipeline.shorten.TaggerUnavailable` when the tagger is not installed."""
    from losh.pipeline.shorten import Shortener

    shorts = Shortener(tagger=TAGGER, rule=RULE).shorten_many(list(texts))
    return [short.strip() or text for short, text in zip(shorts, texts)]

"""The short text an expression trains with when the tagger's rule gives one that names nothing.

The rules of `losh.pipeline.shorten` cut an expression before its predicate. On the terse expressions of RefCOCO
("left", "right one", "guy", "on the left") there is often nothing to cut: the rule returns the whole expression,
which is then its own short text (the subject pathway sees the same words). Two outputs would mislead the short
pathway instead: an empty text (an expression whose first word is tagged as a verb: "left zebra" under the
first-verb rule) and one made only of function words ("on the left" under the subject rule gives "on"). Both
become the long expression, the one text that certainly names the referent.
"""
from __future__ import annotations

import re

# words that name nothing on their own: determiners, prepositions, conjunctions, pronouns, auxiliaries
FUNCTION_WORDS = frozenset("""
    a an the this that these those some any each every another its it there
    on in at of to from with by near next beside behind under over above below between among around along across
    through toward towards into onto against inside outside beyond past after before like for about up down off
    and or but nor which who whom whose where when while as than
    is are was were be being been has have had do does did
    """.split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def names_something(text: str) -> bool:
    """Whether `text` holds a word other than a function word (a noun, an adjective, a position, a number)."""
    return any(word not in FUNCTION_WORDS for word in _WORD.findall(text.lower()))


def usable_short(long: str, short: str) -> str:
    """`short` (stripped) where it names something, else the long expression."""
    short = short.strip()
    return short if short and names_something(short) else long

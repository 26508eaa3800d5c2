"""A byte-level BPE tokenizer trained on the fly (RoBERTa's special tokens and ids), for the
randomly initialised text encoders (the `tiny` preset, the FLOPs benchmark): no file to download.

Training is deterministic for a given corpus, and the tokenizer's JSON travels in the model's
state dict (see `TextEncoder.get_extra_state`), so a checkpoint always decodes texts the same way.
Byte-level BPE never produces an unknown token: words outside the corpus split into pieces.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, as RoBERTa's (pad = 1)

# Words of referring expressions (A2D-Sentences-like and the synthetic shapes data set).
BUILTIN_WORDS = """
a an the this that one two three another other some his her its their
is are was be being it they he she who which while and or but not with without of in on at to from by for
into onto over under above below behind front back near next beside between around through across along
left right up down top bottom middle center centre side corner edge upper lower far close
big small large little tiny huge tall short long wide fat thin young old baby adult child kid boy girl
man men woman women person people guy lady player
red green blue yellow purple orange pink brown black white gray grey dark light bright colored striped
circle square triangle diamond ball shape box rectangle star ring dot
dog cat bird car horse cow sheep duck fish bike bicycle motorcycle truck boat plane toy
moving moves move going goes go sliding slides slide rising rises rise floating upwards downwards
sinking sinks falling falls fall slowly quickly fast jumping jumps jump bouncing bounces hopping hops
standing stands stand staying stays stay still resting rests rotating rotates spinning spins turning turns
walking walks running runs eating eats climbing climbs crawling crawls flying flies rolling rolls
sitting sits holding holds riding rides playing plays looking looks dancing dances swimming swims
does do t-shirt shirt jacket hat dress pants cap road grass water tree table floor wall ground
""".split()


def builtin_corpus() -> list[str]:
    return list(BUILTIN_WORDS)


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus` (texts or words), wrapped as a Hugging Face fast tokenizer."""
    texts = [text for text in corpus if text and text.strip()]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Lowercase()  # 'The' and 'the' are one token
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0),
                                                            add_prefix_space=True, trim_offsets=True)
    return wrap_tokenizer_json(tokenizer.to_str(), max_length)


def wrap_tokenizer_json(tokenizer_json: str, max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=max_length,
    )

"""A word-level tokenizer for the worlds' text encoders, built in code (no hub files).

The digits vocabulary is the handful of words the digits generator is trained on (plus the words of the
method's default prompts, so they map to known ids rather than ``<unk>``); the emoji world passes the
words of its captions (``words``) and splits punctuation off words (``split_punctuation``). Every prompt is encoded as
``<bos> w_1 ... w_n <eos> <pad> ...`` and padded on the right to ``model_max_length``, the layout a
CLIP text encoder expects (it pools at the ``<eos>`` position).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from diffdfkd.worlds.digits import CLASS_NAMES

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
BASE_WORDS = ("a", "an", "handwritten", "digit", "number", "of", "the", "realistic", "photo", "image")
# the words of the looks' prompts (diffdfkd.worlds.looks), after the others so older ids keep their meaning
LOOK_WORDS = (
    "in",
    "plain",
    "pen",
    "strokes",
    "blurry",
    "low-resolution",
    "scan",
    "thick",
    "thin",
    "slanted",
    "faint",
)
VOCAB_WORDS = BASE_WORDS + CLASS_NAMES + LOOK_WORDS
DEFAULT_MAX_LENGTH = 8


def vocabulary(words: tuple[str, ...] = VOCAB_WORDS) -> dict[str, int]:
    """Token -> id: the special tokens first (pad 0, unk 1, bos 2, eos 3), then the words."""
    tokens = list(SPECIAL_TOKENS) + list(dict.fromkeys(words))
    return {token: index for index, token in enumerate(tokens)}


def build_tokenizer(
    max_length: int = DEFAULT_MAX_LENGTH,
    words: tuple[str, ...] = VOCAB_WORDS,
    split_punctuation: bool = False,
) -> PreTrainedTokenizerFast:
    """A lower-casing, word-level ``PreTrainedTokenizerFast`` over ``words``.

    Words are split at whitespace, and with ``split_punctuation`` also at punctuation (``,`` and ``-``
    become tokens of their own). ``max_length`` (>= 3) is the padded length, ``<bos>`` and ``<eos>``
    included; longer prompts are truncated by callers that pass ``truncation=True`` (as diffusers'
    pipelines do).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    if not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"max_length must be an int >= 3 (bos, one word, eos), got {max_length!r}")
    vocab = vocabulary(words)
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = (
        pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    )
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )

"""What each world's generator is trained on: images, their augmentation and looks, and their captions.

A :class:`TrainingSet` hands the generator's training (:mod:`diffdfkd.worlds.generator`) four things:
the images ``[N, 3, 32, 32]`` in [0, 1], a tokenizer, ``augment`` / ``render`` (the random changes of
an image before the VAE sees it, and the look or style each image is in) and ``caption_ids`` (a random
caption of each image, as token ids). Two kinds:

- :class:`DigitsTrainingSet` (``digits``, ``digits-mnist``): PUBLIC MNIST, each image rendered in a look
  drawn per epoch (:mod:`diffdfkd.worlds.looks`); captions "a handwritten digit seven", half of them
  naming the look ("a blurry low-resolution scan of a handwritten digit seven"), 10 % empty.
- :class:`EmojiTrainingSet` (``emoji``): every PUBLIC style's images (the style is fixed per image);
  captions name the class always ("an emoji , mammal"), the emoji itself most of the time ("dog face
  emoji , mammal") and the style half of the time ("dog face emoji , mammal , black line art"); 10 %
  empty.
"""

from __future__ import annotations

from typing import Protocol

import torch

from diffdfkd.distill.augment import RandomAffine, RandomHFlip
from diffdfkd.worlds import emoji
from diffdfkd.worlds.digits import CLASS_NAMES as DIGIT_NAMES
from diffdfkd.worlds.generator_parts import GeneratorConfig
from diffdfkd.worlds.looks import look_index, look_prompt, render_looks
from diffdfkd.worlds.tokenizer import build_tokenizer

CLASS_FREE_PROMPT = "a handwritten digit"
PROMPT_TEMPLATE = "a handwritten digit {label}"
UNCONDITIONAL_PROMPT = ""
EMOJI_PROMPT_TEMPLATE = "an emoji , {label}"
EMOJI_CLASS_FREE_PROMPT = "an emoji"


class TrainingSet(Protocol):
    images: torch.Tensor  # [N, 3, 32, 32] in [0, 1]
    labels: torch.Tensor  # [N] class indices
    tokenizer: object

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor: ...

    def render(
        self, x: torch.Tensor, index: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def caption_ids(self, index: torch.Tensor, looks: torch.Tensor, gen: torch.Generator) -> torch.Tensor: ...


def random_affine(cfg: GeneratorConfig) -> RandomAffine:
    """The generator's training augmentation: small rotations, scalings and shifts."""
    return RandomAffine(cfg.max_rotation_deg, cfg.max_scale, cfg.max_shift_px)


def _encode(tokenizer, prompts: list[str]) -> torch.Tensor:
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return enc.input_ids


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------


def class_prompt(label: int) -> str:
    """The digits class prompt for class index ``label`` (0..9), e.g. 3 -> "a handwritten digit three"."""
    if not 0 <= int(label) < len(DIGIT_NAMES):
        raise ValueError(f"label must be in 0..{len(DIGIT_NAMES) - 1}, got {label!r}")
    return PROMPT_TEMPLATE.format(label=DIGIT_NAMES[int(label)])


def draw_looks(
    images: torch.Tensor, cfg: GeneratorConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render each of ``images [N, 3, 32, 32]`` in a look drawn uniformly from ``cfg.looks``.

    Returns the rendered images and the looks ``[N]`` (indices into ``cfg.looks``). With a single look
    nothing is drawn, so the MNIST-only recipe consumes the generator exactly as before looks existed.
    """
    n = images.shape[0]
    if len(cfg.looks) == 1:
        looks = torch.zeros(n, dtype=torch.long)
    else:
        looks = torch.randint(len(cfg.looks), (n,), generator=generator)
    world_looks = torch.tensor([look_index(name) for name in cfg.looks])[looks]
    return render_looks(images, world_looks), looks


def prompt_table(tokenizer, looks: tuple[str, ...] = ()) -> torch.Tensor:
    """``[12 + 10 L, max_length]`` token ids: the 10 class prompts, the class-free prompt, the empty
    prompt, then for each class and each of the ``L`` ``looks`` its look-naming class prompt."""
    prompts = [class_prompt(c) for c in range(len(DIGIT_NAMES))] + [CLASS_FREE_PROMPT, UNCONDITIONAL_PROMPT]
    if len(looks) > 1:
        prompts += [look_prompt(c, look) for c in range(len(DIGIT_NAMES)) for look in looks]
    return _encode(tokenizer, prompts)


def caption_ids(
    labels: torch.Tensor,
    looks: torch.Tensor,
    cfg: GeneratorConfig,
    table: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Token ids ``[B, max_length]`` of random captions for ``labels`` and ``looks`` (``[B]`` each).

    ``table`` is :func:`prompt_table`'s: row ``c`` (0..9) the class prompt of class ``c``, row 10 the
    class-free prompt, row 11 the empty prompt, row ``12 + c * L + l`` class ``c`` in look ``l``. A
    caption is empty with probability ``p_empty``, else a class prompt with probability ``p_class``
    (naming the look too with probability ``p_look``), else class-free.
    """
    n_classes = len(DIGIT_NAMES)
    u = torch.rand(labels.shape[0], generator=generator)
    row = torch.full_like(labels, n_classes)
    is_class = u >= 1 - (1 - cfg.p_empty) * cfg.p_class
    row = torch.where(is_class, labels, row)
    if cfg.p_look > 0:
        names_look = is_class & (torch.rand(labels.shape[0], generator=generator) < cfg.p_look)
        row = torch.where(names_look, n_classes + 2 + labels * len(cfg.looks) + looks, row)
    row = torch.where(u < cfg.p_empty, torch.full_like(labels, n_classes + 1), row)
    return table[row]


class DigitsTrainingSet:
    """PUBLIC MNIST for a digits recipe: looks drawn per image and epoch, captions by :func:`caption_ids`."""

    def __init__(self, cfg: GeneratorConfig, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.cfg, self.images, self.labels = cfg, images, labels
        self.tokenizer = build_tokenizer(cfg.max_length)
        self.table = prompt_table(self.tokenizer, cfg.looks)

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_affine(self.cfg)(x, gen)

    def render(self, x: torch.Tensor, index: torch.Tensor, gen: torch.Generator):
        return draw_looks(x, self.cfg, gen)

    def caption_ids(self, index: torch.Tensor, looks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return caption_ids(self.labels[index], looks, self.cfg, self.table, gen)


# ----------------------------------------------------------------------------------------------
# emoji
# ----------------------------------------------------------------------------------------------


def emoji_captions(name: str, label: int, style: str) -> list[str]:
    """The four captions an emoji image can get, in the order :meth:`EmojiTrainingSet.caption_ids`
    indexes them: with its name, with its name and style, without its name, with the style alone."""
    cls = emoji.CLASS_NAMES[label]
    phrase = emoji.STYLE_PHRASES[style]
    named = f"{name} emoji , {cls}"
    unnamed = EMOJI_PROMPT_TEMPLATE.format(label=cls)
    return [named, f"{named} , {phrase}", unnamed, f"{unnamed} , {phrase}"]


def emoji_vocabulary(texts: list[str]) -> tuple[str, ...]:
    """The words of ``texts`` as the emoji tokenizer splits them (lower case, punctuation apart), in
    order of first appearance."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    words: dict[str, None] = {}
    for text in texts:
        words.update((w, None) for w, _ in split.pre_tokenize_str(text.lower()))
    return tuple(words)


class EmojiTrainingSet:
    """Every PUBLIC emoji style (style fixed per image), captioned by :func:`emoji_captions`.

    A caption is empty with probability ``p_empty``; else class-free ("an emoji") with probability
    ``1 - p_class``; else it names the class, the emoji with probability ``p_name`` and the style with
    probability ``p_look``.
    """

    def __init__(
        self,
        cfg: GeneratorConfig,
        images: torch.Tensor,
        labels: torch.Tensor,
        styles: torch.Tensor,
        names: list[str],
    ) -> None:
        self.cfg, self.images, self.labels, self.styles = cfg, images, labels, styles
        captions = [
            emoji_captions(n, int(c), cfg.looks[int(s)])
            for n, c, s in zip(names, labels, styles, strict=True)
        ]
        flat = [c for four in captions for c in four] + [EMOJI_CLASS_FREE_PROMPT, UNCONDITIONAL_PROMPT]
        prompts = [
            EMOJI_PROMPT_TEMPLATE.format(label=c) + (f" , {p}" if p else "")
            for c in emoji.CLASS_NAMES
            for p in ("", *emoji.STYLE_PHRASES.values())
        ]
        words = emoji_vocabulary(flat + prompts)
        self.tokenizer = build_tokenizer(cfg.max_length, words, split_punctuation=True)
        ids = _encode(self.tokenizer, flat)
        longest = int((ids != self.tokenizer.pad_token_id).sum(1).max())
        if ids[:, -1].ne(self.tokenizer.pad_token_id).any():
            raise ValueError(f"an emoji caption needs {longest}+ tokens; raise max_length ({cfg.max_length})")
        self.table = ids[:-2].view(len(names), 4, -1)  # [N, 4, L]
        self.class_free, self.empty = ids[-2], ids[-1]

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = 1 - random_affine(self.cfg)(1 - x, gen)  # the affine fills with 0: white, on the inverted image
        return RandomHFlip()(x, gen) if self.cfg.flip else x

    def render(self, x: torch.Tensor, index: torch.Tensor, gen: torch.Generator):
        return x, self.styles[index]

    def caption_ids(self, index: torch.Tensor, looks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = index.shape[0]
        u, named, styled = (torch.rand(n, generator=gen) for _ in range(3))
        variant = 2 * (named >= self.cfg.p_name).long() + (styled < self.cfg.p_look).long()
        ids = self.table[index, variant]
        p_empty, p_free = self.cfg.p_empty, (1 - self.cfg.p_empty) * (1 - self.cfg.p_class)
        is_free = (u >= p_empty) & (u < p_empty + p_free)
        ids = torch.where(is_free[:, None], self.class_free.expand_as(ids), ids)
        return torch.where((u < self.cfg.p_empty)[:, None], self.empty.expand_as(ids), ids)


def training_set(world: str, cfg: GeneratorConfig, max_images: int | None = None) -> TrainingSet:
    """The PUBLIC training set of ``world``'s generator (the first ``max_images`` images if given)."""
    if world == "emoji":
        data = emoji.public_arrays()
        images, labels, styles = emoji.load_public_styled("all")
        names = [str(n) for s in emoji.PUBLIC_STYLES for n in data[f"{s}_names"]]
        if max_images:
            # a spread over every style rather than the first style's images
            keep = torch.linspace(0, len(labels) - 1, max_images).long()
            images, labels, styles = images[keep], labels[keep], styles[keep]
            names = [names[i] for i in keep.tolist()]
        return EmojiTrainingSet(cfg, images, labels, styles, names)
    from diffdfkd.worlds.digits import load_public

    images, labels = load_public("all")
    return DigitsTrainingSet(cfg, images[:max_images], labels[:max_images])

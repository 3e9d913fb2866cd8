"""Looks of the broad digits world: renderings of PUBLIC MNIST, captions, and the generator's captions."""

from __future__ import annotations

import pytest  # noqa: E402
import torch  # noqa: E402

from diffdfkd.worlds import captions as C  # noqa: E402
from diffdfkd.worlds import generator_parts as P  # noqa: E402
from diffdfkd.worlds import looks as L  # noqa: E402
from diffdfkd.worlds.digits import load_public, render_8x8  # noqa: E402
from diffdfkd.worlds.tokenizer import build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_public("test")[0][:64]


def _skew(images: torch.Tensor) -> torch.Tensor:
    """Moment skew ``mu_11 / mu_02`` (x per y, y down) of ``[N, 3, H, W]`` images."""
    g = images[:, 0]
    h, w = g.shape[1:]
    ys, xs = torch.arange(h, dtype=g.dtype), torch.arange(w, dtype=g.dtype)
    mass = g.sum((1, 2))
    cy, cx = (g.sum(2) * ys).sum(1) / mass, (g.sum(1) * xs).sum(1) / mass
    dy, dx = ys[None, :, None] - cy[:, None, None], xs[None, None, :] - cx[:, None, None]
    return (g * dx * dy).sum((1, 2)) / (g * dy * dy).sum((1, 2))


@pytest.mark.parametrize("look", L.LOOKS)
def test_every_look_is_a_deterministic_grey_image_in_range(digits, look):
    out = L.render_look(digits, look)
    assert out.shape == digits.shape and out.dtype == digits.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert torch.equal(out, L.render_look(digits, look))
    assert (out[:, 0].amax((1, 2)) > 0.3).all()  # no digit is erased
    if look == "plain":
        assert torch.equal(out, digits)
    else:
        assert not torch.allclose(out, digits, atol=1e-3)


def test_scan_is_the_uci_recipe_rendered_like_the_private_data(digits):
    bitmap = L.scan_8x8(digits)
    assert bitmap.shape == (64, 1, 8, 8)
    counts = bitmap * 16
    assert torch.allclose(counts, counts.round(), atol=1e-5)  # 17 levels: 0..16 on pixels per block
    assert counts.min() == 0 and counts.max() == 16 and len(counts.round().unique()) == 17
    # the bounding box fills the 32x32 box along its longer side: ink in the first and last block
    cols, rows = (bitmap[:, 0] > 0).any(1), (bitmap[:, 0] > 0).any(2)
    full_width = cols[:, 0] & cols[:, -1]
    full_height = rows[:, 0] & rows[:, -1]
    assert (full_width | full_height).all()
    assert torch.equal(L.render_look(digits, "scan"), render_8x8(bitmap))  # the world's own rendering
    # a bitmap that is already a 32x32 box of ink comes back as full blocks
    box = torch.zeros(1, 3, 32, 32)
    box[:, :, 8:24, 8:24] = 1
    assert torch.equal(L.scan_8x8(box), torch.ones(1, 1, 8, 8))


def test_stroke_looks_change_the_ink_as_named(digits):
    ink = digits[:, 0].sum((1, 2))
    assert (L.render_look(digits, "thick")[:, 0].sum((1, 2)) > 1.3 * ink).all()
    assert (L.render_look(digits, "thin")[:, 0].sum((1, 2)) < 0.8 * ink).all()
    faint = L.render_look(digits, "faint")
    assert torch.allclose(faint, digits * L.FAINT)
    slanted = _skew(L.render_look(digits, "slanted"))
    assert (slanted - L.SLANT).abs().median() < 0.1 and _skew(digits).std() > slanted.std()


def test_render_looks_per_image_and_errors(digits):
    looks = torch.arange(len(digits)) % len(L.LOOKS)
    out = L.render_looks(digits, looks)
    for index, look in enumerate(L.LOOKS):
        chosen = looks == index
        assert torch.equal(out[chosen], L.render_look(digits[chosen], look))
    with pytest.raises(ValueError, match="one look per image"):
        L.render_looks(digits, looks[:3])
    with pytest.raises(ValueError, match="scan"):
        L.render_look(digits, "sepia")


def test_look_prompts_name_the_digit_and_the_look_in_known_words():
    assert L.look_prompt(7) == "a handwritten digit seven"
    assert L.look_prompt(7, "scan") == "a blurry low-resolution scan of a handwritten digit seven"
    assert L.look_prompt(0, "thick") == "a handwritten digit zero in thick strokes"
    with pytest.raises(ValueError):
        L.look_prompt(10, "scan")
    tok = build_tokenizer(P.BROAD.max_length)
    for look in L.LOOKS:
        ids = tok(L.look_prompt(3, look), truncation=True, max_length=P.BROAD.max_length).input_ids
        assert tok.unk_token_id not in ids and ids[-1] == tok.eos_token_id  # fits, nothing truncated


def test_broad_captions_always_name_the_digit_and_half_the_look():
    tok = build_tokenizer(P.BROAD.max_length)
    table = C.prompt_table(tok, P.BROAD.looks)
    assert table.shape == (12 + 10 * len(P.BROAD.looks), P.BROAD.max_length)
    n = 6000
    labels = torch.arange(n) % 10
    looks = torch.arange(n) % len(P.BROAD.looks)
    ids = C.caption_ids(labels, looks, P.BROAD, table, torch.Generator().manual_seed(0))
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    empty = sum(t == "" for t in texts) / n
    named = [L.look_prompt(int(c), P.BROAD.looks[int(k)]) for c, k in zip(labels, looks, strict=True)]
    plain = [L.look_prompt(int(c)) for c in labels]
    with_look = sum(t == m for t, m in zip(texts, named, strict=True)) / n
    look_free = sum(t == p for t, p in zip(texts, plain, strict=True)) / n
    assert abs(empty - 0.1) < 0.02 and abs(with_look - 0.45) < 0.03 and abs(look_free - 0.45) < 0.03
    assert empty + with_look + look_free == pytest.approx(1.0)


def test_draw_looks_is_seeded_and_single_look_draws_nothing(digits):
    a, looks_a = C.draw_looks(digits, P.BROAD, torch.Generator().manual_seed(1))
    b, looks_b = C.draw_looks(digits, P.BROAD, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(looks_a, looks_b) and len(looks_a.unique()) > 1
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    same, looks = C.draw_looks(digits, P.FULL, gen)
    assert torch.equal(same, digits) and (looks == 0).all() and torch.equal(gen.get_state(), state)


@pytest.mark.skipif(
    not P.SHIPPED_GENERATOR.parent.joinpath("digits_looks.safetensors").is_file(), reason="no look classifier"
)
def test_shipped_look_classifier_tells_the_looks_apart_on_held_out_public_images():
    from diffdfkd.worlds.judge import load_look_classifier, look_fractions

    classifier = load_look_classifier()
    images = load_public("test")[0][:100]
    for index, look in enumerate(L.LOOKS):
        mix = look_fractions(classifier, L.render_looks(images, torch.full((100,), index)))
        assert set(mix) == set(L.LOOKS) and sum(mix.values()) == pytest.approx(1.0)
        assert mix[look] >= 0.9, (look, mix)


BROAD_GENERATOR = P.SHIPPED_GENERATOR.parent / "digits_broad_generator"


@pytest.mark.skipif(not (BROAD_GENERATOR / "model_index.json").is_file(), reason="no broad generator")
def test_shipped_broad_generator_takes_look_prompts():
    pipe = P.load_generator(BROAD_GENERATOR)
    tok = pipe.tokenizer
    assert tok.model_max_length == P.BROAD.max_length
    assert tok.unk_token_id not in tok(L.look_prompt(7, "scan")).input_ids  # its own vocabulary
    images = P.sample_images(pipe, [L.look_prompt(7, "scan"), L.look_prompt(2)], [0, 1], steps=3)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_judges_reject_unknown_names_and_targets():
    from diffdfkd.errors import UserError
    from diffdfkd.pipeline import world_look_mix
    from diffdfkd.worlds.judge import load_judge, train_judge

    with pytest.raises(UserError, match="looks"):
        load_judge("cifar")
    with pytest.raises(ValueError, match="target"):
        train_judge(target="colour")
    assert world_look_mix("not-a-world", torch.zeros(2, 3, 32, 32)) is None

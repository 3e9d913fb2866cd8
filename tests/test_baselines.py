"""The baseline sources behind the one source interface: DeepInversion, Fast, CMI and the real private images."""

import copy

import pytest
import torch

from diffdfkd.baselines.cmi import CMISource, instance_contrast, local_view
from diffdfkd.baselines.deepinversion import DeepInversionSource, jitter_view
from diffdfkd.baselines.fast import FastSource
from diffdfkd.baselines.real import RealDataSource
from diffdfkd.config import ConfigError, load_config, replace
from diffdfkd.models.teacher import build_teacher
from diffdfkd.pipeline import DEMO_CONFIG, distill
from diffdfkd.runtime import generators_for, sample_seed
from diffdfkd.synth.dataset import load_synthetic
from diffdfkd.synth.online_student import OnlineStudent
from diffdfkd.synth.run import SynthPlan, synthesize
from diffdfkd.worlds import get_world, teacher_spec


def _batch(config, num_classes=3, batch=0):
    plan = SynthPlan.from_config(config, num_classes)
    indices = plan.indices(batch)
    return indices, plan.targets(indices)


def _target_prob(teacher, images, targets):
    with torch.no_grad():
        return (teacher(images).softmax(dim=1) * targets).sum(dim=1)


def test_deepinversion_lowers_its_loss_and_raises_the_target_probability(make_config, make_teacher, tmp_path):
    # The BN weight low: a random tiny teacher's statistics would dominate what CE can show.
    overrides = {"deepinversion.iterations": 30, "deepinversion.bn_weight": 0.05}
    config = make_config(tmp_path, **{"synth.source": "deepinversion", **overrides})
    teacher = make_teacher()
    source = DeepInversionSource(config, teacher)
    indices, targets = _batch(config)
    batch = source.generate(indices, targets)
    assert batch.images.shape == (4, 3, 32, 32) and torch.equal(batch.targets, targets)
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    first, last = batch.logs[0], batch.logs[-1]
    assert last["total"] < 0.95 * first["total"] and last["ce"] < first["ce"]
    # A random tiny teacher is nearly blind to its input, so the rise is small, but it is every sample's.
    before = _target_prob(teacher, source.initial_images(indices), targets)
    after = _target_prob(teacher, batch.images, targets)
    assert bool((after > before + 0.003).all())


def test_deepinversion_is_deterministic_per_index(make_config, make_teacher, tmp_path):
    config = make_config(tmp_path, **{"deepinversion.iterations": 3})
    source = DeepInversionSource(config, make_teacher())
    indices, targets = _batch(config, batch=1)
    a = source.generate(indices, targets).images
    assert torch.equal(a, source.generate(indices, targets).images)
    assert not torch.equal(source.initial_images(indices), source.initial_images(indices + 4))


def test_a_flip_mirrors_some_views_and_leaves_the_others():
    images = torch.rand(16, 3, 8, 8)
    unflipped = jitter_view(images, [torch.Generator().manual_seed(i) for i in range(16)], 0, flip=False)
    assert torch.equal(unflipped, images)
    flipped = jitter_view(images, [torch.Generator().manual_seed(i) for i in range(16)], 0, flip=True)
    mirrored = [torch.equal(f, x.flip(dims=(2,))) for f, x in zip(flipped, images, strict=True)]
    unchanged = [torch.equal(f, x) for f, x in zip(flipped, images, strict=True)]
    assert any(mirrored) and any(unchanged) and all(m or u for m, u in zip(mirrored, unchanged, strict=True))


def test_real_source_serves_private_images_of_the_requested_classes(make_config, make_teacher, tmp_path):
    config = make_config(tmp_path, **{"synth.source": "real", "synth.images_per_class": 8})
    source = RealDataSource(config, make_teacher())
    private, labels = get_world("digits").load("private:train")
    plan = SynthPlan.from_config(config, 3)
    indices = torch.arange(plan.total)
    batch = source.generate(indices, plan.targets(indices))
    for image, k in zip(batch.images, plan.targets(indices).argmax(dim=1), strict=True):
        matches = (private == image).flatten(1).all(dim=1)
        assert matches.any() and bool((labels[matches] == k).all())
    for k in range(3):  # within the class's size, every sample of a class is a different image
        own = batch.images[plan.targets(indices).argmax(dim=1) == k]
        assert len(torch.unique(own.flatten(1), dim=0)) == len(own) == 8
    # Deterministic per index: the same image whatever the batch it is asked in.
    assert torch.equal(source.generate(indices[4:8], plan.targets(indices[4:8])).images, batch.images[4:8])
    other_seed = RealDataSource(make_config(tmp_path, **{"seed": 1}), make_teacher())
    assert not torch.equal(other_seed.generate(indices, plan.targets(indices)).images, batch.images)


def test_both_baselines_write_a_dataset_through_synthesize(make_config, tmp_path):
    for name, extra in (("deepinversion", {"deepinversion.iterations": 3}), ("real", {})):
        config = make_config(tmp_path / name, **{"synth.source": name, **extra})
        out = synthesize(config, progress=False)
        data = load_synthetic(out)
        assert len(data) == 8 and data.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
        assert torch.isfinite(data.teacher_logits).all()
        for part in ("manifest.jsonl", "summary.json", "signature.json", "classes.json"):
            assert (out / part).is_file(), (name, part)
        assert synthesize(config, progress=False) == out  # resumes: nothing left to do
    real = load_synthetic(tmp_path / "real")
    private, _ = get_world("digits").load("private:train")
    nearest = (real.images[:, None] - private[None]).abs().flatten(2).amax(dim=2).min(dim=1).values
    assert float(nearest.max()) <= 0.5 / 255 + 1e-6  # the real images, up to uint8 rounding


def _sample_gradient(source, normalised, targets):
    """d L / d v of sample 0 of ``normalised [B, C, S, S]`` (no jitter: the view is the image)."""
    v = normalised.clone().requires_grad_(True)
    total, _ = source.loss(v, source.pixels(v), targets)
    (grad,) = torch.autograd.grad(total, v)
    return grad[0]


def test_a_samples_gradient_does_not_depend_on_its_group_or_batch_size(make_config, make_teacher, tmp_path):
    teacher = make_teacher()
    v = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.eye(3)[torch.tensor([0, 0, 1, 1, 2, 2, 0, 0])]
    weights = {"deepinversion.tv_l1_weight": 0.1, "deepinversion.first_bn_weight": 10.0}

    def gradient(batch, group, per="sample"):
        config = make_config(tmp_path, **{"synth.batch_size": batch, "synth.group_size": group,
                                          "deepinversion.bn_per": per, **weights})  # fmt: skip
        return _sample_gradient(DeepInversionSource(config, teacher), v[:batch], targets[:batch])

    alone = gradient(2, 2)
    assert alone.abs().sum() > 0
    for batch, group in ((4, 2), (4, 4), (8, 4), (8, 8)):
        assert torch.allclose(gradient(batch, group), alone, rtol=1e-4, atol=1e-7), (batch, group)
    # Per mixing group the BN term pools the group: independent of the batch, not of the group.
    in_group = gradient(4, 4, "group")
    assert torch.allclose(gradient(8, 4, "group"), in_group, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(gradient(8, 8, "group"), in_group, rtol=1e-4, atol=1e-7)
    # ... but each image is charged its group's distance: the BN pull per image keeps its strength
    # as the group grows (uncharged, it would fall as 1 / group size: 4x from 2 to 8).
    weights.update({"deepinversion.ce_weight": 0.0, "deepinversion.tv_l1_weight": 0.0,
                    "deepinversion.tv_l2_weight": 0.0, "deepinversion.l2_weight": 0.0})  # fmt: skip
    norms = [float(gradient(8, g, "group").norm()) for g in (2, 4, 8)]
    assert max(norms) < 2 * min(norms), norms


def test_deepinversion_with_a_grayscale_teacher_makes_grey_images(make_config, make_teacher, tmp_path):
    config = make_config(tmp_path, **{"teacher.grayscale": True, "deepinversion.iterations": 3})
    source = DeepInversionSource(config, make_teacher())
    indices, targets = _batch(config)
    images = source.generate(indices, targets).images
    assert images.shape == (4, 3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert images.std() > 0.05  # not a flat grey: the start is N(0, 1) in the teacher's space
    colour = DeepInversionSource(replace(config, **{"teacher.grayscale": False}), make_teacher())
    coloured = colour.generate(indices, targets).images
    assert not torch.equal(coloured[:, 0], coloured[:, 1])


def test_fast_meta_learns_across_rounds_and_replays_after_a_resume(make_config, make_teacher, tmp_path):
    config = make_config(tmp_path, **{"synth.source": "fast", "fast.steps": 3, "fast.width": 8,
                                      "fast.latent_dim": 16, "fast.warmup_rounds": 1})  # fmt: skip
    source = FastSource(config, make_teacher())
    start = [p.detach().clone() for p in source.generator.parameters()]
    batches = [source.generate(*_batch(config, batch=b)) for b in range(3)]
    assert source.rounds == 4  # one warm-up round and three written ones
    moved = [not torch.equal(a, p) for a, p in zip(start, source.generator.parameters(), strict=True)]
    assert all(moved), "every meta-generator parameter takes the first-order MAML step"
    for batch in batches:
        assert batch.images.shape == (4, 3, 32, 32) and torch.isfinite(batch.images).all()
        assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
        assert batch.logs[-1]["total"] < batch.logs[0]["total"]  # the inner steps lower L
    # A fresh source asked for batch 2 (a resume) replays rounds 0-1 and gives the same images.
    resumed = FastSource(config, make_teacher()).generate(*_batch(config, batch=2))
    assert torch.allclose(resumed.images, batches[2].images, atol=1e-6)
    with pytest.raises(ValueError, match="in order"):
        source.generate(*_batch(config, batch=1))


def test_fast_writes_a_dataset_the_distiller_reads(make_config, tmp_path):
    config = make_config(tmp_path / "fast", **{"synth.source": "fast", "fast.steps": 2, "fast.width": 8,
                                               "fast.latent_dim": 16, "teacher.grayscale": True,
                                               "distill.epochs": 1, "distill.batch_size": 4})  # fmt: skip
    config = replace(config, out_dir=str(tmp_path / "run"))
    out = synthesize(config, progress=False)
    data = load_synthetic(out)
    assert len(data) == 8 and data.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
    assert torch.equal(data.images[:, 0], data.images[:, 2])  # grey teacher: one channel, replicated
    result = distill(config, data, progress=False)
    assert len(result.fit.history) == 1


@pytest.fixture(scope="module")
def digits():
    """The digits world's shipped teacher (a trained one: a random tiny teacher is nearly blind to its
    input) and a config of small rounds of 10 for it, without the adversarial term."""
    config = load_config(DEMO_CONFIG, ["guidance.adv_weight=0", "synth.batch_size=10", "synth.group_size=10"])
    return config, build_teacher(teacher_spec(config))


def test_fast_meta_learned_generator_reaches_a_lower_loss_in_k_steps_than_a_fresh_one(digits):
    # The same round (batch 0, same seeds, k = 3 inner steps) from the generator after 8 meta-training
    # rounds and from a fresh one: what meta-learning buys is a better start for the few steps.
    config, teacher = digits
    tiny = {"fast.steps": 3, "fast.width": 8, "fast.latent_dim": 16}
    best = []
    for warmup in (0, 8):
        source = FastSource(replace(config, **tiny, **{"fast.warmup_rounds": warmup}), teacher)
        best.append(min(log["total"] for log in source.generate(*_batch(config, 10)).logs))
    assert best[1] < 0.75 * best[0], f"meta-learnt {best[1]:.2f} vs fresh {best[0]:.2f}"


def test_adversarial_term_drives_the_next_batch_away_from_the_online_student(digits):
    # One online student, trained on 3 warm-up rounds; each next round made against it with L_adv and,
    # from the same source state and seeds, without: with L_adv the teacher-student KL on the new images is
    # higher in every batch (the quantity L_adv raises; argmax agreement on 20 images per batch moves in steps of 0.05 and
    # ties on some CPUs).
    config, teacher = digits
    config = replace(config, **{"synth.batch_size": 20, "synth.group_size": 20, "guidance.adv_weight": 3.0,
                                "online.warmup_rounds": 3, "online.kd_steps": 100, "online.lr": 0.1,
                                "online.temperature": 1.0, "fast.warmup_rounds": 4, "fast.steps": 5,
                                "fast.width": 16, "fast.latent_dim": 32})  # fmt: skip
    student = OnlineStudent(config, 10, 32, torch.device("cpu"))
    source = FastSource(config, teacher, student=student)

    def divergence(images: torch.Tensor) -> float:
        with torch.no_grad():
            log_p_t = torch.log_softmax(teacher(images), dim=1)
            log_p_s = torch.log_softmax(student(images), dim=1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean().item()

    for b in range(3):
        images = source.generate(*_batch(config, 10, batch=b)).images
        pixels = images.mul(255).round().to(torch.uint8)
        with torch.no_grad():
            logits = teacher(pixels.float() / 255)
        student.learn(pixels, logits)
    assert student.active
    with_adv, without = [], []
    for b in (3, 4, 5):
        plain = copy.deepcopy(source)
        plain.adv_weight = 0.0
        without.append(divergence(plain.generate(*_batch(config, 10, batch=b)).images))
        with_adv.append(divergence(source.generate(*_batch(config, 10, batch=b)).images))
    assert all(a > b for a, b in zip(with_adv, without, strict=True)), (with_adv, without)


# ----------------------------------------------------------------------------------------------------
# CMI: a generator per batch, CE + BN (+ L_adv) + the contrastive loss against a memory bank.

CMI_TINY = {"synth.source": "cmi", "cmi.iterations": 6, "cmi.width": 8, "cmi.latent_dim": 16,
            "cmi.head_dim": 8, "cmi.negatives": 6, "cmi.bank_size": 10, "cmi.lr": 0.05}  # fmt: skip


def test_cmi_makes_images_deterministically_and_keeps_its_bank(make_config, make_teacher, tmp_path):
    config = make_config(tmp_path, **CMI_TINY)
    source = CMISource(config, make_teacher())
    batches = [source.generate(*_batch(config, batch=b)) for b in range(3)]
    assert source.rounds == 3 and source.bank.shape[0] == 10, "the bank keeps the newest bank_size rows"
    for batch in batches:
        assert batch.images.shape == (4, 3, 32, 32) and torch.isfinite(batch.images).all()
        assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
        assert {"ce", "bn", "contrast", "total", "p_target"} <= set(batch.logs[-1])
    again = CMISource(config, make_teacher()).generate(*_batch(config, batch=0))
    assert torch.equal(again.images, batches[0].images), "same seed, same images"
    # A fresh source asked for batch 2 (a resume without the online student) redoes rounds 0-1.
    resumed = CMISource(config, make_teacher()).generate(*_batch(config, batch=2))
    assert torch.allclose(resumed.images, batches[2].images, atol=1e-6)
    with pytest.raises(ValueError, match="in order"):
        source.generate(*_batch(config, batch=1))
    grey = CMISource(replace(config, **{"teacher.grayscale": True}), make_teacher()).generate(*_batch(config))
    assert torch.equal(grey.images[:, 0], grey.images[:, 2]), "grey teacher: one channel, replicated"
    with pytest.raises(ConfigError, match="needs the online student"):
        CMISource(replace(config, **{"guidance.adv_weight": 1.0}), make_teacher())


def test_contrastive_loss_finds_each_views_partner_and_trains_the_local_side():
    g = torch.Generator().manual_seed(0)
    views = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    matched = instance_contrast(views, views, 4, 0.1)
    shuffled = instance_contrast(views, views.roll(1, dims=0), 4, 0.1)
    assert matched < 0.1 < 2.0 < shuffled, (matched, shuffled)
    # The batch's rows and the bank's rows are averaged apart: the batch keeps its share.
    per_row = torch.nn.functional.cross_entropy(views @ views.T / 0.1, torch.arange(6), reduction="none")
    assert torch.isclose(matched, per_row[:4].mean() + per_row[4:].mean())
    assert torch.isclose(instance_contrast(views, views, 6, 0.1), per_row.mean()), "no bank: one mean"
    # Gradient steps on the local side (the global side is a fixed target) lower it.
    local = torch.randn(6, 8, generator=g).requires_grad_(True)
    optimizer = torch.optim.SGD([local], lr=0.5)
    losses = []
    for _ in range(30):
        global_ = torch.nn.functional.normalize(views.clone().requires_grad_(True), dim=1)
        loss = instance_contrast(torch.nn.functional.normalize(local, dim=1), global_, 4, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_local_view_is_a_random_crop_of_the_image():
    image = torch.arange(64.0).view(1, 1, 8, 8).repeat(3, 1, 1, 1)

    def crop(scale: float) -> torch.Tensor:
        return local_view(image, [torch.Generator().manual_seed(i) for i in range(3)], scale, False)

    assert torch.equal(crop(0.25), crop(0.25)), "drawn from the samples' own generators"
    views = crop(0.25)
    assert views.shape == image.shape and not torch.allclose(views[0], views[1])
    assert image.min() <= views.min() and views.max() <= image.max(), "inside the image"
    # a smaller area is a stronger zoom: neighbouring pixels differ less
    assert views.diff(dim=3).abs().mean() < image.diff(dim=3).abs().mean()


def test_cmi_raises_the_teachers_target_probability(digits):
    config, teacher = digits
    config = replace(config, **{"cmi.iterations": 30, "cmi.width": 8, "cmi.latent_dim": 16, "cmi.lr": 0.05})
    source = CMISource(config, teacher)
    indices, targets = _batch(config, 10)
    with torch.no_grad():  # the round's generator and latents as they start
        seeds = generators_for([sample_seed(config.seed, int(i)) for i in indices])
        initial = source.fresh_generator(0)(torch.stack([torch.randn(16, generator=g) for g in seeds]))
    batch = source.generate(indices, targets)
    before, after = _target_prob(teacher, initial, targets), _target_prob(teacher, batch.images, targets)
    assert before.mean() < 0.2 and after.mean() > before.mean() + 0.25, (before, after)
    assert (after > before).float().mean() >= 0.8, (before, after)


def test_cmi_writes_a_dataset_the_distiller_reads(make_config, tmp_path):
    config = make_config(tmp_path / "cmi", **{**CMI_TINY, "distill.epochs": 1, "distill.batch_size": 4})
    config = replace(config, out_dir=str(tmp_path / "run"))
    data = load_synthetic(synthesize(config, progress=False))
    assert len(data) == 8 and data.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
    assert len(distill(config, data, progress=False).fit.history) == 1

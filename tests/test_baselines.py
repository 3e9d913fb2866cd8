"""The baseline sources behind the one source interface: DeepInversion and the real private images."""

import torch

from diffdfkd.baselines.deepinversion import DeepInversionSource, jitter_view
from diffdfkd.baselines.real import RealDataSource
from diffdfkd.config import DeepInversionConfig, load_config
from diffdfkd.pipeline import DEMO_CONFIG
from diffdfkd.synth.dataset import load_synthetic
from diffdfkd.synth.run import SynthPlan, synthesize
from diffdfkd.synth.sources import SOURCES
from diffdfkd.worlds import get_world


def _batch(config, num_classes=3, batch=0):
    plan = SynthPlan.from_config(config, num_classes)
    indices = plan.indices(batch)
    return indices, plan.targets(indices)


def _target_prob(teacher, images, targets):
    with torch.no_grad():
        return (teacher(images).softmax(dim=1) * targets).sum(dim=1)


def test_sources_are_registered():
    assert {"diffdfkd", "deepinversion", "real"} <= set(SOURCES.names())


def test_deepinversion_lowers_its_loss_and_raises_the_target_probability(make_config, make_teacher, tmp_path):
    config = make_config(tmp_path, **{"synth.source": "deepinversion", "deepinversion.iterations": 30})
    teacher = make_teacher()
    source = DeepInversionSource(config, teacher)
    indices, targets = _batch(config)
    batch = source.generate(indices, targets)
    assert batch.images.shape == (4, 3, 32, 32) and torch.equal(batch.targets, targets)
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    first, last = batch.logs[0], batch.logs[-1]
    assert last["total"] < 0.9 * first["total"] and last["ce"] < first["ce"]
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


def test_flips_are_off_for_digits_and_a_parameter():
    assert DeepInversionConfig().flip is False
    assert load_config(DEMO_CONFIG).deepinversion.flip is False
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

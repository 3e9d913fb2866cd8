"""Reference rows beside the data-free sources: real images (NOT data-free) and Gaussian noise.

- ``synth.source=real``: a source serving a world split's real images (``synth.real_split``; by default
  the PRIVATE training images, the upper bound) through the one source interface, so KD on real data
  runs through the same writer, dataset and KD recipe as every synthetic source. Sample ``i`` of class ``k`` is the ``j``-th image of class ``k`` in a seeded order
  (``j``: the sample's rank within its class under ``SynthPlan``'s layout), cycling when the budget
  exceeds the class's images.
- the "student from scratch on real data" row is the same run with ``distill.kd=false``: cross-entropy
  on the labels of such a dataset, without a teacher, same recipe.
- ``synth.source=noise``: Gaussian noise images (mean 0.5, std 0.25, clamped to [0, 1]), seeded per
  sample: the floor every data-free method must beat by a wide margin.
"""

from __future__ import annotations

import torch

from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.runtime import stream_seed
from diffdfkd.synthetic import SynthBatch, SyntheticSource
from diffdfkd.worlds import get_world, list_worlds


class RealDataSource(SyntheticSource):
    """The world's PRIVATE ``train`` images, by class. Reading them breaks the data-free setting: this
    source exists only as the upper-bound baseline.

    The teacher's class names are looked up among the world's, so a teacher over a subset of the
    world's classes works too.
    """

    def __init__(self, config: ExperimentConfig, teacher: torch.nn.Module) -> None:
        split = config.synth.real_split
        if config.world not in list_worlds():
            raise ConfigError(
                f"synth.source=real needs a shipped world's private data; world {config.world!r} is not "
                f"one of {', '.join(list_worlds())}"
            )
        world = get_world(config.world)
        missing = [name for name in teacher.class_names if name not in world.class_names]
        if missing:
            raise ConfigError(f"the teacher's classes {missing} are not classes of world {world.name!r}")
        images, labels = world.load(split)
        self.pools: list[torch.Tensor] = []
        for k, name in enumerate(teacher.class_names):
            members = (labels == world.class_names.index(name)).nonzero().flatten()
            if not len(members):
                raise ConfigError(f"world {world.name!r} split {split!r} has no image of class {name!r}")
            order = torch.randperm(
                len(members),
                generator=torch.Generator().manual_seed(stream_seed("real_order", config.seed, k)),
            )
            self.pools.append(images[members[order]])
        self.per_group = config.synth.samples_per_class_in_group

    def rank_in_class(self, index: int) -> int:
        """Rank of sample ``index`` among the samples of its class: with ``m`` consecutive samples per
        class and ``K`` classes per cycle (``SynthPlan``), ``(i // (m K)) m + i % m``."""
        cycle = self.per_group * len(self.pools)
        return (index // cycle) * self.per_group + index % self.per_group

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """Real images ``[B, 3, H, W]`` in [0, 1] of the classes ``argmax targets [B, K]``."""
        classes = targets.argmax(dim=1).tolist()
        images = [
            self.pools[k][self.rank_in_class(int(i)) % len(self.pools[k])]
            for i, k in zip(indices, classes, strict=True)
        ]
        return SynthBatch(images=torch.stack(images), targets=targets)


class NoiseSource(SyntheticSource):
    """Gaussian noise images ``clamp(0.5 + 0.25 n)``, ``n ~ N(0, I)`` seeded per sample index."""

    def __init__(self, config: ExperimentConfig, teacher: torch.nn.Module) -> None:
        self.seed = config.seed
        self.shape = (teacher.in_channels, teacher.input_size, teacher.input_size)

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        images = [
            torch.randn(
                self.shape,
                generator=torch.Generator().manual_seed(stream_seed("noise", self.seed, int(i))),
            )
            for i in indices
        ]
        return SynthBatch(images=(0.5 + 0.25 * torch.stack(images)).clamp(0, 1), targets=targets)

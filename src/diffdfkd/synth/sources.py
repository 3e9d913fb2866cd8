"""The table of synthetic-data sources, by their ``synth.source`` name.

Every source implements ``diffdfkd.synthetic.SyntheticSource`` and is built as
``factory(config=ExperimentConfig, teacher=Teacher)``; a bench loops over names. Adding a source is
adding its class and one line here.
"""

from __future__ import annotations

from diffdfkd.baselines.deepinversion import DeepInversionSource
from diffdfkd.baselines.fast import FastSource
from diffdfkd.baselines.real import NoiseSource, RealDataSource
from diffdfkd.registry import Registry
from diffdfkd.synth.diffusion_source import DiffusionSource
from diffdfkd.synthetic import SyntheticSource

SOURCES: Registry[SyntheticSource] = Registry(
    "synthetic-data source",
    {
        "diffdfkd": DiffusionSource,  # teacher-guided diffusion with Latent CutMix (mode none: plain CFG)
        "deepinversion": DeepInversionSource,  # pixels optimised from noise against the teacher
        "fast": FastSource,  # a generator meta-learned across synthesis rounds (Fang et al. 2022)
        "real": RealDataSource,  # a world split's real images (PRIVATE train: the upper bound, not data-free)
        "noise": NoiseSource,  # Gaussian noise images (the floor)
    },
)

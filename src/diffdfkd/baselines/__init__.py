"""Baselines of the comparison, as synthetic-data sources (named in ``diffdfkd.synth.sources.SOURCES``).

- ``deepinversion``: pixels optimised from noise against the teacher (Yin et al. 2020).
- ``fast``: a generator meta-learned across synthesis rounds (Fang et al. 2022), one round per batch.
- ``cmi``: a generator optimised per batch with CE + BN statistics (+ the adversarial term) + a
  contrastive loss against a memory bank of earlier images' teacher features (Fang et al. 2021).
- ``real``: the world's real PRIVATE training images (upper bound, NOT data-free); with
  ``distill.kd=false``, the student trained with cross-entropy on them and no teacher.

Unguided diffusion (DM-KD style) needs no source of its own: it is the ``diffdfkd`` source with
``guidance.mode=none`` (see ``diffdfkd.bench.ROWS``).
"""

from diffdfkd.baselines.cmi import CMISource
from diffdfkd.baselines.deepinversion import DeepInversionSource
from diffdfkd.baselines.fast import FastSource
from diffdfkd.baselines.real import RealDataSource

__all__ = ["CMISource", "DeepInversionSource", "FastSource", "RealDataSource"]

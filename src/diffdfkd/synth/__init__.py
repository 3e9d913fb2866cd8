"""The table of synthetic-data sources, the resumable dataset folder, and ``synthesize``."""

from diffdfkd.synth.dataset import SyntheticData, load_synthetic
from diffdfkd.synth.run import SynthPlan, synthesize
from diffdfkd.synth.sources import SOURCES
from diffdfkd.synth.writer import DatasetWriter, IncompleteDatasetError, SynthWriteError, merge_manifest

__all__ = [
    "SOURCES",
    "DatasetWriter",
    "IncompleteDatasetError",
    "SynthPlan",
    "SynthWriteError",
    "SyntheticData",
    "load_synthetic",
    "merge_manifest",
    "synthesize",
]

"""Synthetic-data sources, the resumable dataset folder, and ``synthesize``."""

from diffdfkd.synth.dataset import SyntheticData, load_synthetic
from diffdfkd.synth.run import SynthPlan, synthesize
from diffdfkd.synth.source import SOURCES, SynthBatch, SyntheticSource, SynthExtra
from diffdfkd.synth.writer import DatasetWriter, IncompleteDatasetError, SynthWriteError, merge_manifest

__all__ = [
    "SOURCES",
    "DatasetWriter",
    "IncompleteDatasetError",
    "SynthBatch",
    "SynthExtra",
    "SynthPlan",
    "SynthWriteError",
    "SyntheticData",
    "SyntheticSource",
    "load_synthetic",
    "merge_manifest",
    "synthesize",
]

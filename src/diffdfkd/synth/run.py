"""``synthesize``: a whole synthetic dataset from a config, resumable and shardable.

Layout (fixed by the config, independent of shards and restarts): sample ``i`` has class
``(i // m) % K`` (``m = synth.samples_per_class_in_group``); mixing groups are consecutive blocks of
``synth.group_size`` samples; batch ``b`` holds samples ``[b B, (b + 1) B)``. The total is
``images_per_class * K`` rounded UP to whole batches, so with an uneven split the first classes of the
cycle get a few more images. Each sample's noise comes from its own generator seeded from
``(seed, i)``, each group's CutMix randomness from ``(seed, group)``: an image is the same whatever the
shard or restart (byte-identical) or batch size (equal up to float rounding).

With the adversarial term (``guidance.adv_weight > 0``) a batch also depends on the online student,
trained between batches on the images written so far (``diffdfkd.synth.online_student``): the batches
are then rounds made in order by one process (``diffdfkd.synth.rounds``); a resumed run replays the
rounds already written (the student's KD steps, and the source's own state) and still ends
byte-identical.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.experiment import Experiment, experiment_of
from diffdfkd.synth.dataset import read_rows
from diffdfkd.synth.online_student import check_online, online_arch
from diffdfkd.synth.rounds import Rounds
from diffdfkd.synth.writer import (
    DatasetWriter,
    atomic_write,
    config_signature,
    merge_manifest,
    missing_batches,
)
from diffdfkd.synthetic import layout_targets

logger = logging.getLogger(__name__)

# What the progress bar shows: the last guided pass's losses, the online student's agreement.
POSTFIX = ("ce", "bn", "adv", "p_target", "agree")


@dataclass(frozen=True)
class SynthPlan:
    """Which sample indices, classes and batches make up the dataset."""

    num_classes: int
    images_per_class: int
    batch_size: int
    group_size: int
    per_class: int

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_classes: int) -> SynthPlan:
        s = config.synth
        if config.cutmix.enabled and not config.cutmix.cross_class and s.samples_per_class_in_group < 2:
            raise ConfigError(
                "same-class Latent CutMix needs synth.samples_per_class_in_group >= 2 (a partner of the "
                "same class in each mixing group); raise it, set cutmix.cross_class=true or cutmix.enabled=false"
            )
        return cls(num_classes, s.images_per_class, s.batch_size, s.group_size, s.samples_per_class_in_group)

    @property
    def total(self) -> int:
        return self.num_batches * self.batch_size

    @property
    def num_batches(self) -> int:
        return math.ceil(self.images_per_class * self.num_classes / self.batch_size)

    def indices(self, batch: int) -> torch.Tensor:
        """Sample indices ``[B]`` of batch ``batch``."""
        return torch.arange(batch * self.batch_size, (batch + 1) * self.batch_size)

    def targets(self, indices: torch.Tensor) -> torch.Tensor:
        """One-hot targets ``[B, K]`` of class ``(i // m) % K`` (``layout_targets``)."""
        return layout_targets(indices, self.per_class, self.num_classes)

    def shard_batches(self, shard: int, num_shards: int) -> range:
        """The contiguous range of batches of ``shard`` out of ``num_shards``."""
        n = self.num_batches
        return range(shard * n // num_shards, (shard + 1) * n // num_shards)


def resolve_shard(shard: int | None, num_shards: int | None) -> tuple[int, int]:
    """``(shard, num_shards)``; both ``None`` -> ``RANK``/``WORLD_SIZE`` from torchrun, else ``(0, 1)``."""
    if shard is None and num_shards is None:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1
    if shard is None or num_shards is None:
        raise ConfigError("give both --shard and --num-shards, or neither")
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"shard {shard} of {num_shards}: need 0 <= shard < num_shards")
    return shard, num_shards


def dataset_signature(
    config: ExperimentConfig, plan: SynthPlan, class_names: tuple[str, ...], save_size: int
) -> dict[str, Any]:
    """What identifies the dataset of ``config`` in its folder (see ``DatasetWriter.state``).

    The ``online.*`` keys count only with ``guidance.adv_weight > 0``: without ``L_adv`` there is no
    online student, and datasets made before those keys existed keep their signature. Likewise the
    ``cmi.*`` keys count only for ``synth.source=cmi`` (added after the other sources' datasets), and
    ``guidance.recurrence`` only when above 1 (added later still).
    """
    adv = config.guidance.adv_weight > 0
    signature = config_signature(
        config,
        num_batches=plan.num_batches,
        class_names=list(class_names),
        save_size=save_size,
        **({"online_student": online_arch(config)} if adv else {}),
    )
    unsigned = [p for p, used in (("online.", adv), ("cmi.", config.synth.source == "cmi")) if not used]
    if config.guidance.recurrence == 1:
        unsigned.append("guidance.recurrence")
    return {k: v for k, v in signature.items() if not k.startswith(tuple(unsigned))}


def summarise(root: Path, seconds: float) -> dict[str, Any]:
    """Images per class, mean teacher target-class probability and accuracy of the final images."""
    rows = read_rows(root)
    finals = [r for r in rows if r["kind"] == "final"]
    names = json.loads((root / "classes.json").read_text())
    per_class = Counter(r["class"] for r in finals)
    files = list((root / "seconds").glob("*.txt"))
    redone = sum(float(f.read_text()) for f in files if f.name.endswith(".redo.txt"))
    made = sum(float(f.read_text()) for f in files if not f.name.endswith(".redo.txt"))
    return {
        "images": len(finals),
        "intermediates": len(rows) - len(finals),
        "images_per_class": {names[k]: per_class.get(k, 0) for k in range(len(names))},
        "mean_teacher_prob_target": sum(r["teacher_prob_target"] for r in finals) / max(len(finals), 1),
        "teacher_accuracy": sum(r["teacher_pred"] == r["class"] for r in finals) / max(len(finals), 1),
        "seconds_last_process": round(seconds, 2),
        # every process that made a batch (resumes and shards included), from seconds/<batch>.txt
        "seconds_all_processes": round(made, 2),
        # what resumes spent redoing rounds already written, from seconds/<batch>.redo.txt
        "seconds_redone": round(redone, 2),
    }


def synthesize(
    config: ExperimentConfig | Experiment,
    *,
    shard: int | None = None,
    num_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Synthesize the dataset of ``config`` (or this shard's part of it) and return its folder.

    Skips batches already done (resume); with ``num_shards`` (or torchrun's RANK/WORLD_SIZE) this
    process takes a contiguous range of batches. The process that finds every batch done merges
    ``manifest.jsonl`` and writes ``summary.json`` (logged too). ``overwrite``: replace a dataset made
    with another config instead of refusing (a folder made with the same config is resumed, never
    wiped, so shards may all pass it; delete the folder to redo a run from scratch).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    shard, num_shards = resolve_shard(shard, num_shards)
    experiment = experiment_of(config)
    config = experiment.config
    check_online(config, num_shards)
    teacher = experiment.teacher
    if config.generator.channels_last or config.generator.compile:
        # those speed settings change the network in place, for good: distillation and evaluation
        # (the same experiment's teacher) see it as loaded
        teacher = copy.deepcopy(teacher)
    class_names = tuple(teacher.class_names)
    plan = SynthPlan.from_config(config, len(class_names))
    save_size = config.synth.save_size or teacher.input_size
    out = experiment.synth_dir
    writer = DatasetWriter(out, class_names, started=start)
    signature = dataset_signature(config, plan, class_names, save_size)
    writer.prepare(config, signature, overwrite=overwrite)
    for b, problems in writer.drop_damaged(plan.shard_batches(shard, num_shards)).items():
        logger.warning("%s: batch %d is damaged (%s); making it again", out, b, "; ".join(problems[:3]))
    batches = plan.shard_batches(shard, num_shards)
    todo = [b for b in batches if not writer.is_done(b)]
    if todo:
        rounds = Rounds(experiment.generator_config(), plan, writer, teacher, save_size)
        bar = tqdm(
            total=len(batches) * plan.batch_size,
            initial=(len(batches) - len(todo)) * plan.batch_size,
            unit="img",
            desc=f"synthesize {shard + 1}/{num_shards}" if num_shards > 1 else "synthesize",
            disable=not progress,
        )
        for b in rounds.schedule(batches):
            made, logs = rounds.play(b)
            if made:
                bar.update(plan.batch_size)
            if logs:
                bar.set_postfix({k: f"{logs[k]:.3g}" for k in POSTFIX if k in logs})
        bar.close()
    if not missing_batches(out):
        merge_manifest(out)
        summary = summarise(out, time.perf_counter() - start)
        atomic_write(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        logger.info("synthetic dataset %s: %s", out, summary)
    else:
        logger.info("shard %d/%d done; other batches are still missing in %s", shard, num_shards, out)
    writer.release()
    return out

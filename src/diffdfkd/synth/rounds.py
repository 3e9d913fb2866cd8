"""The synthesis rounds: each batch made by the source, written as saved, and the online student's
step between batches, in one object (:class:`Rounds`).

Without the adversarial term (``guidance.adv_weight = 0``) a batch depends on its seeds alone, and the
rounds are just the batches still to make, in order; unless the source builds on earlier rounds (Fast,
CMI: ``SyntheticSource.builds_on_earlier_rounds``), whose rounds are all played as below.

With it, every batch is a ROUND of the online student (:mod:`diffdfkd.synth.online_student`), made
in batch order by one process. Round ``b``:

1. the source makes batch ``b`` against the student as it is after round ``b - 1`` (the student says
   whether ``L_adv`` is on: ``OnlineStudent.active``);
2. the batch is quantised as the dataset saves it (uint8 at ``save_size``, the teacher's logits on the
   saved image) and written;
3. the student learns from the batch AS SAVED, taken from the records in memory (the same pixels and
   logits that the PNGs and manifest part hold: nothing is read back from disk).

On a resume, the rounds of the batches already written are REPLAYED in order before the first batch
to make: the source redoes what that round did to its own state (``SyntheticSource.replay``: a no-op
for DiffDFKD and DeepInversion; Fast and CMI redo their round and drop its images), and the student,
if any, learns from the batch as a previous process saved it (the only time this module reads the
folder). So the student, and every batch after it, is the same as in an uninterrupted run:
byte-identical. The replays' time is the resume's, not the dataset's: the writer keeps it apart from
the next batch's seconds (``DatasetWriter.redone``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from diffdfkd.config import ExperimentConfig
from diffdfkd.runtime import resolve_device, sample_seed
from diffdfkd.synth.online_student import OnlineStudent, resize
from diffdfkd.synth.sources import SOURCES
from diffdfkd.synth.writer import DatasetWriter, Record
from diffdfkd.synthetic import SynthBatch, SyntheticSource

if TYPE_CHECKING:
    from diffdfkd.synth.run import SynthPlan


class Rounds:
    """The rounds of one synthesis (module docstring): owns the source and the online student.

    ``config``: the resolved config (``generator.path`` filled); ``plan``: a ``SynthPlan``;
    ``writer``: the prepared dataset folder; ``teacher``: the ``Teacher`` (it labels the saved images);
    ``save_size``: the side of the saved images.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        plan: SynthPlan,
        writer: DatasetWriter,
        teacher: torch.nn.Module,
        save_size: int,
    ) -> None:
        self.plan = plan
        self.writer = writer
        self.teacher = teacher
        self.seed = config.seed
        self.save_size = save_size
        self.student: OnlineStudent | None = None
        if config.guidance.adv_weight > 0:
            device = resolve_device(config.generator.device)
            self.student = OnlineStudent(config, teacher.num_classes, save_size, device)
        self.source: SyntheticSource = SOURCES.create(
            config.synth.source,
            config=config,
            teacher=teacher,
            **({"student": self.student} if self.student is not None else {}),
        )

    def schedule(self, batches: range) -> list[int]:
        """The rounds to play for this process's ``batches``: the unwritten ones; with the online
        student or a source that builds on earlier rounds, every batch up to the last unwritten one
        (the written ones are replayed)."""
        todo = [b for b in batches if not self.writer.is_done(b)]
        if (self.student is None and not self.source.builds_on_earlier_rounds) or not todo:
            return todo
        return [b for b in batches if b <= todo[-1]]

    def play(self, batch: int) -> tuple[bool, dict[str, float]]:
        """Round ``batch``: make and write it, or replay it when it is written; then the student's
        step. Returns ``(made, logs)``: whether images were made, and the last step's named losses
        with the student's ``agree`` and ``kd``."""
        indices = self.plan.indices(batch)
        targets = self.plan.targets(indices)
        if self.writer.is_done(batch):
            started = time.perf_counter()
            self.source.replay(indices, targets)
            logs = {} if self.student is None else self.student.learn(*read_saved(self.writer, batch))
            self.writer.redone(time.perf_counter() - started)
            return False, logs
        made = self.source.generate(indices, targets)
        records = batch_records(self.writer, self.teacher, made, indices, self.seed, self.save_size)
        self.writer.write_batch(batch, records)
        logs = made.logs[-1] if made.logs else {}
        if self.student is not None:
            logs = logs | self.student.learn(*as_saved(records))
        return True, logs


@torch.no_grad()
def make_records(
    writer: DatasetWriter,
    teacher: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    save_size: int,
    steps: torch.Tensor | None = None,
) -> list[Record]:
    """Quantise ``images [B, 3, H, W]`` to uint8 at ``save_size`` and describe each in a manifest row,
    with the teacher's logits on the image as saved."""
    pixels = resize(images, save_size).clamp(0, 1).mul(255).round().to(torch.uint8)
    device = next(iter(teacher.state_dict().values())).device
    logits = teacher(pixels.to(device).float() / 255).float().cpu()
    probs = logits.softmax(dim=1)
    classes = targets.argmax(dim=1)
    records = []
    for j in range(len(indices)):
        index, k = int(indices[j]), int(classes[j])
        step = None if steps is None else int(steps[j])
        row: dict[str, Any] = {"index": index, "file": writer.file_for(index, k, step), "class": k}
        if not torch.equal(targets[j], F.one_hot(classes[j], targets.shape[1]).to(targets.dtype)):
            row["target"] = [round(float(v), 6) for v in targets[j]]
        row["seed"] = sample_seed(seed, index)
        row["kind"] = "final" if step is None else "intermediate"
        if step is not None:
            row["step"] = step
        row["teacher_logits"] = [round(float(v), 5) for v in logits[j]]
        row["teacher_prob_target"] = round(float(probs[j, k]), 6)
        row["teacher_pred"] = int(logits[j].argmax())
        records.append(Record(row["file"], pixels[j].permute(1, 2, 0).numpy(), row))
    return records


def batch_records(
    writer: DatasetWriter,
    teacher: torch.nn.Module,
    batch: SynthBatch,
    indices: torch.Tensor,
    seed: int,
    save_size: int,
) -> list[Record]:
    """Records of a batch's final images, then of its extra (intermediate) images."""
    records = make_records(
        writer, teacher, batch.images, batch.targets, indices, seed=seed, save_size=save_size
    )
    if batch.extra is not None:
        e = batch.extra
        records += make_records(
            writer, teacher, e.images, e.targets, e.indices, seed=seed, save_size=save_size, steps=e.steps
        )
    return records


def as_saved(records: list[Record]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as its files hold it, from its records in memory: the images ``[N, 3, S, S]`` uint8
    (in the records' order: finals, then intermediates) and the teacher's logits as the manifest
    rounds them ``[N, K]``. PNG is lossless and JSON keeps a float's digits, so this equals
    ``read_saved`` of the written batch."""
    pixels = torch.from_numpy(np.stack([r.pixels for r in records])).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.tensor([r.row["teacher_logits"] for r in records])


def read_saved(writer: DatasetWriter, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch that an earlier process wrote, read back from its folder as ``as_saved`` gives it."""
    from PIL import Image

    rows = [json.loads(line) for line in writer.part_path(batch).read_text().splitlines() if line.strip()]
    pixels = []
    for row in rows:
        with Image.open(writer.root / row["file"]) as image:
            pixels.append(np.asarray(image.convert("RGB")))
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([row["teacher_logits"] for row in rows])

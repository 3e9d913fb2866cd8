"""The end-to-end job: synthesize -> distill -> evaluate -> report, resumable at every stage."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffdfkd.check import check
from diffdfkd.check.folders import REPORT_NAMES, output_state
from diffdfkd.config import ConfigError, ExperimentConfig, load_config
from diffdfkd.distill.trainer import FitResult, TensorData, checkpoint_run, fit, split_holdout
from diffdfkd.evaluate import bn_statistics_distance, evaluate
from diffdfkd.experiment import Experiment, experiment_of
from diffdfkd.models import create_model, export_weights
from diffdfkd.report import image_grid, write_report
from diffdfkd.runinfo import write_run_info
from diffdfkd.runtime import stream_seed
from diffdfkd.synth.dataset import SyntheticData, load_image_folder, load_synthetic
from diffdfkd.synth.run import synthesize
from diffdfkd.worlds import get_world, list_worlds
from diffdfkd.worlds.judge import JUDGES, load_judge, look_fractions


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the process that writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class DistillOutput:
    student: torch.nn.Module
    fit: FitResult
    weights: Path


def claim_output(config: ExperimentConfig, overwrite: bool, data_id: str | None = None) -> Path:
    """Create ``config.out_dir`` or check it was made with the same config (so it can be resumed).

    A folder made with another config is refused, naming the changed keys, unless ``overwrite``
    (see ``check.output_state``); so is, when ``data_id`` is given, a student trained on another
    dataset. Overwriting deletes the stale student and the
    results and reports made from it.
    """
    out = Path(config.out_dir)
    stale = output_state(config, overwrite) == "replaced"
    if data_id is not None:
        run = checkpoint_run(out / "student")
        if run is not None and run.get("data") != data_id:
            if not overwrite:
                raise ConfigError(
                    f"{out}/student holds a student trained on another dataset; choose another out_dir, "
                    f"or pass --overwrite to train a new one"
                )
            stale = True
    if stale and is_main_process():
        shutil.rmtree(out / "student", ignore_errors=True)
        for name in REPORT_NAMES:
            (out / name).unlink(missing_ok=True)
    if is_main_process():
        write_run_info(out, config)
    return out


def distill(
    config: ExperimentConfig | Experiment, data: SyntheticData, *, progress: bool = True
) -> DistillOutput:
    """Distil ``config.distill.student`` from the configured teacher on a synthetic dataset.

    A ``distill.holdout_fraction`` slice of the SYNTHETIC data is held out for monitoring (agreement
    with the teacher); the student returned is the last epoch's. Resumes from ``<out_dir>/student``.
    ``distill.kd=false`` trains with cross-entropy on the dataset's labels instead, without the teacher.
    """
    experiment = experiment_of(config)
    config, teacher = experiment.config, experiment.teacher
    if len(data.class_names) != teacher.num_classes:
        raise ConfigError(
            f"the synthetic set has {len(data.class_names)} classes, the teacher {teacher.num_classes}"
        )
    with torch.random.fork_rng():  # the student's initial weights depend on the seed alone
        torch.manual_seed(stream_seed("student_init", config.seed))
        student = create_model(
            config.distill.student, num_classes=teacher.num_classes, in_channels=data.images.shape[1]
        )
    train_idx, holdout_idx = split_holdout(len(data), config.distill.holdout_fraction, config.seed)
    out = experiment.out_dir / "student"
    result = fit(
        student,
        TensorData(data.images[train_idx], data.labels[train_idx]),
        holdout=TensorData(data.images[holdout_idx], data.labels[holdout_idx]) if len(holdout_idx) else None,
        teacher=teacher if config.distill.kd else None,
        recipe=config.distill,
        out_dir=out,
        seed=config.seed,
        resume=(out / "state.pt").is_file(),
        progress=progress,
        data_id=data.identity,
    )
    weights = out / "student.safetensors"
    if is_main_process():  # under torchrun every rank ends with the same weights; one writes them
        export_weights(student, weights, half=False)
    return DistillOutput(student, result, weights)


def load_test_data(
    config: ExperimentConfig, class_names: tuple[str, ...], split: str = "private:test"
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The labelled test images ``[N, 3, H, W]``, labels ``[N]`` and the data's name: ``eval_folder``
    (class folders matched to ``class_names`` by name), else the world's ``split``, by default its
    PRIVATE test split (``check.check_test_data`` checks which applies first)."""
    if config.eval_folder:
        images, labels = load_image_folder(config.eval_folder, class_names)
        return images, labels, config.eval_folder
    images, labels = get_world(config.world).load(split)
    return images, labels, f"{config.world} {split}"


def world_look_mix(world: str, images: torch.Tensor) -> dict[str, float] | None:
    """The world's look (digits) or style (emoji) classifier's mix of ``images [N, 3, 32, 32]``; None
    outside a shipped world or where that classifier is not built."""
    if world not in list_worlds() or not get_world(world).looks:
        return None
    name = get_world(world).look_judge
    if not JUDGES[name][2].is_file():
        return None
    return look_fractions(load_judge(name), images)


def run_experiment(config: ExperimentConfig, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Synthesize, distil, evaluate teacher and student on the world's PRIVATE test split, report.

    Every stage resumes: rerunning the same command after an interruption continues where it stopped.
    Everything cheap to check is checked first (``diffdfkd.check``), before any folder is claimed.
    Returns the summary also written to ``<out_dir>/results.json``.
    """
    experiment = Experiment.build(config)  # the teacher, built once for every stage
    check(experiment, "run", overwrite=overwrite)
    out = claim_output(config, overwrite)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    synth_dir = synthesize(experiment, overwrite=overwrite, progress=progress)
    timings["synthesis"] = time.perf_counter() - start
    data = load_synthetic(synth_dir)

    start = time.perf_counter()
    distilled = distill(experiment, data, progress=progress)
    timings["distillation"] = time.perf_counter() - start

    # The PRIVATE test split is read once, here, for the final report.
    start = time.perf_counter()
    teacher = experiment.teacher.cpu()  # as loaded: distillation may have moved it to its device
    test_images, test_labels, test_source = load_test_data(config, teacher.class_names)
    teacher_eval = evaluate(teacher, test_images, test_labels)
    student_eval = evaluate(distilled.student, test_images, test_labels)
    timings["evaluation"] = time.perf_counter() - start

    synth_summary = json.loads((synth_dir / "summary.json").read_text())
    look_mix = world_look_mix(config.world, data.images)
    bn_distance = bn_statistics_distance(teacher, data.images)
    bn_distance_test = bn_statistics_distance(teacher, test_images)
    # all processes' synthesis time (a resumed run's earlier ones too), not only this call's
    seconds_per_image = synth_summary.get("seconds_all_processes", timings["synthesis"]) / len(data)
    summary = {
        "test_data": test_source,
        "teacher_top1": teacher_eval["top1"],
        "student_top1": student_eval["top1"],
        "student": config.distill.student,
        "synthetic_images": len(data),
        "teacher_accuracy_on_synthetic": synth_summary.get("teacher_accuracy"),
        "look_mix_of_synthetic": look_mix,
        "bn_distance_of_synthetic": bn_distance,
        "bn_distance_of_test_images": bn_distance_test,
        "synthesis_s_per_image": seconds_per_image,
        "synthesis_redone_s": synth_summary.get("seconds_redone", 0.0),  # resumes redoing written rounds
        "holdout_agreement_last_epoch": distilled.fit.holdout_agreement,
        "holdout_top1_last_epoch": distilled.fit.holdout_top1,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "teacher_eval": teacher_eval,
        "student_eval": student_eval,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(
        out,
        config=config,
        class_names=data.class_names,
        teacher_eval=teacher_eval,
        student_eval=student_eval,
        test_data=test_source,
        synth_summary={
            "images": len(data),
            "teacher accuracy on the synthetic images": f"{synth_summary.get('teacher_accuracy', float('nan')):.3f}",
            "mean teacher probability of the target class": f"{synth_summary.get('mean_teacher_prob_target', float('nan')):.3f}",
            "looks of the synthetic images (look classifier, PUBLIC-trained)": (
                ", ".join(f"{k} {v:.2f}" for k, v in look_mix.items()) if look_mix else "n/a"
            ),
            "BN-statistics distance to the teacher's running statistics (whole set)": _number(bn_distance),
            f"the same of the test images ({test_source}; for reference)": _number(bn_distance_test),
            "synthesis seconds per image (all processes' synthesis time / images)": f"{seconds_per_image:.3f}",
            "student agreement with the teacher on held-out synthetic images (last epoch)": (
                f"{distilled.fit.holdout_agreement:.3f}"
                if distilled.fit.holdout_agreement is not None
                else "n/a"
            ),
        },
        timings=timings,
        grid=image_grid(data.images, data.labels, len(data.class_names)),
        # eval_folder empty: the test images are the world's PRIVATE split (load_test_data)
        test_grid=None if config.eval_folder else image_grid(test_images, test_labels, len(data.class_names)),
        metrics_csv=out / "student" / "metrics.csv",
    )
    return summary


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "digits.yaml"
QUICK_OVERRIDES = [
    "synth.images_per_class=4",
    "generator.num_steps=4",
    "distill.epochs=2",
    "distill.batch_size=16",
]


def demo_config(out_dir: str = "runs/demo", quick: bool = False) -> ExperimentConfig:
    """The shipped digits config, writing to ``out_dir``; ``quick``: tiny budgets for a smoke run."""
    return load_config(DEMO_CONFIG, [f"out_dir={out_dir}", *(QUICK_OVERRIDES if quick else [])])

"""Synthesis throughput at Stable Diffusion scale: the reference recipe against our settings (``make bench-speed``).

Rows (``--modes``), each timed through the library's real path, ``DiffusionSource.generate`` ->
``diffusion.sampler.sample`` -> ``guidance.guide.TeacherGuide``, with a CIFAR ResNet-34 teacher (zoo
``resnet34``, random weights, CIFAR-10 mean/std) at 32 x 32:

- ``reference``: the reference recipe: batch 1, fp16, classic attention, eager, 50 DDPM steps, CFG 3,
  guidance at every step through the UNet (mode ``full``), decode at the native 512 px.
- ``ours``: the same mathematics with our settings: batch ``--batch-size``, bf16 autocast, SDPA
  attention, channels_last, ``torch.compile`` (UNet, VAE decoder, teacher), gradient checkpointing.
  ``ours_eager``: the same without ``torch.compile`` (not run by default).
- approximations, each alone on top of ``ours``: ``one_pass``, ``detach_unet``, ``every2`` (guidance
  every 2nd step), ``window`` (guidance on the first half of the schedule), ``half_res`` (generation
  at half the native side: 256 px for SD 1.5).

Timing: a warm-up run (compilation included), then a timed run of ``--steps`` steps of a short
schedule; each step is timed at its ``scheduler.step`` (device synchronised) and the times are
extrapolated to the 50-step schedule: ``s/image = (n_g t_g + n_u t_u + t_decode) / B`` with ``n_g``
the guided steps of the 50 (the library's own ``guided_steps``). FLOPs: counted with
``torch.utils.flop_counter.FlopCounterMode`` on one guided and one unguided step of the same path
(eager, no checkpointing) and scaled the same way. MFU: achieved FLOP/s over a MEASURED matmul peak
(bf16 on CUDA, fp32 on CPU). Weights are random: speed does not depend on them.

LoRA rows (``--adapt-ranks``, after the synthesis rows): one timed step of ``diffdfkd adapt-generator`` at
each rank (0: the whole UNet) on the same SD 1.5 parts, at the native resolution, a group of
``--adapt-group`` images (``benchmarks/lora_adapt.py``'s ``real_step``): seconds per step, trainable
parameters, Adam state and peak memory, with the meta-device memory count beside them.

``--full-arch-check`` instead builds the full SD 1.5 architecture on the CPU, runs ONE guided step at
batch 1 at a reduced resolution through the real path (FLOPs counted, time taken), and counts the
FLOPs of every row at 512 px on the meta device, checked against the real count at the reduced size.

Writes ``<device>_<tiny|sd15>.json`` / ``.md`` (``cpu_sd15_flops.*`` for the check) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "speed"
SCHEDULE_STEPS = 50
CFG_SCALE = 3.0
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
GPU_COMMAND = "python benchmarks/synth_throughput.py --device cuda --out benchmarks/results/speed/"
DIGITS_BENCH = "BENCHMARKS.md, digits benches (benchmarks/results/synth/ and benchmarks/results/digits/)"


@dataclass(frozen=True)
class Settings:
    """How the models compute (not what): one set of loaded parts serves every row that shares it."""

    batch: int
    dtype: str
    attention: str
    channels_last: bool
    compile: bool
    grad_checkpointing: bool


@dataclass(frozen=True)
class Row:
    """One benchmark row: a compute setting (``reference`` | ``ours`` | ``ours_eager``) and the guidance."""

    name: str
    settings: str
    exact: bool  # computes the same mathematics as the reference recipe
    description: str
    accuracy: str
    mode: str = "full"
    every: int = 1
    window_end: float = 1.0
    resolution_divisor: int = 1
    tiny_decoder: bool = False  # the guidance gradient through TAESD (AutoencoderTiny), the image by the VAE


ROWS = {
    row.name: row
    for row in (
        Row("reference", "reference", True, "reference recipe: batch 1, classic attention, eager; fp16 on CUDA",
            "the method itself"),
        Row("ours", "ours", True, "our defaults: batched, SDPA, channels_last, checkpointing; bf16 and torch.compile on CUDA",
            "none (same mathematics)"),
        Row("ours_eager", "ours_eager", True, "our defaults without torch.compile; bf16 on CUDA",
            "none (same mathematics)"),
        Row("one_pass", "ours", False, "one-pass classifier guidance (no second UNet pass)",
            f"{DIGITS_BENCH}: row one_pass", mode="one_pass"),
        Row("detach_unet", "ours", False, "gradient through decoder and teacher only",
            f"{DIGITS_BENCH}: row detach_unet", mode="detach_unet"),
        Row("every2", "ours", False, "guidance every 2nd step",
            "not yet in the digits bench: python benchmarks/synth_bench.py --modes full guidance.every=2",
            every=2),
        Row("window", "ours", False, "guidance on the first half of the schedule only",
            "not yet in the digits bench: python benchmarks/synth_bench.py --modes full guidance.window_end=0.5",
            window_end=0.5),
        Row("half_res", "ours", False, "generation at half the native side (256 px for SD 1.5)",
            "no digits analogue (one native resolution); needs a CIFAR run at generator.resolution=256",
            resolution_divisor=2),
        Row("tiny_decoder", "ours", False, "guidance gradient through TAESD (AutoencoderTiny); saved image by the VAE",
            f"{DIGITS_BENCH}: guidance-cost front", tiny_decoder=True),
        Row("tiny_one_pass", "ours", False, "TAESD gradient + one-pass classifier guidance",
            f"{DIGITS_BENCH}: guidance-cost front", mode="one_pass", tiny_decoder=True),
        Row("tiny_every2", "ours", False, "TAESD gradient, guidance every 2nd step",
            f"{DIGITS_BENCH}: guidance-cost front", every=2, tiny_decoder=True),
        Row("tiny_window", "ours", False, "TAESD gradient, guidance on the first half of the schedule",
            f"{DIGITS_BENCH}: guidance-cost front", window_end=0.5, tiny_decoder=True),
        Row("one_pass_every2", "ours", False, "one-pass classifier guidance every 2nd step",
            f"{DIGITS_BENCH}: guidance-cost front", mode="one_pass", every=2),
    )
}  # fmt: skip
DEFAULT_MODES = (
    "reference",
    "ours",
    "one_pass",
    "detach_unet",
    "every2",
    "window",
    "half_res",
    "tiny_decoder",
    "tiny_one_pass",
    "tiny_every2",
    "tiny_window",
    "one_pass_every2",
)


def settings_for(kind: str, *, batch: int, device: torch.device, compile: bool, grad_ckpt: bool) -> Settings:
    """The compute settings of ``kind``. Off CUDA every row runs in fp32 (CPU half precision is not
    what a GPU does) and ``compile`` is what ``--compile`` resolved to."""
    half = device.type == "cuda"
    if kind == "reference":
        return Settings(1, "fp16" if half else "fp32", "classic", False, False, False)
    return Settings(batch, "bf16" if half else "fp32", "sdpa", True, compile and kind == "ours", grad_ckpt)


def guidance_for(row: Row, *, every: int | None = None, window_end: float | None = None) -> Any:
    """The row's ``GuidanceConfig`` (defaults: CE 1, BN 0.1, step size 1), optionally re-scheduled."""
    from diffdfkd.config import GuidanceConfig

    return GuidanceConfig(
        mode=row.mode,
        every=row.every if every is None else every,
        window_end=row.window_end if window_end is None else window_end,
    )


def guided_steps(guidance: Any, num_steps: int = SCHEDULE_STEPS) -> int:
    """How many of ``num_steps`` steps the sampler guides (the library's own ``guided_steps``)."""
    from diffdfkd.guidance.modes import guided_steps as library_guided_steps

    return library_guided_steps(guidance, num_steps)


# ---------------------------------------------------------------------------------------------------
# Building the parts.


def cifar_teacher(device: torch.device | str = "cpu") -> torch.nn.Module:
    """A random-weight CIFAR-10 ResNet-34 ``Teacher`` (32 x 32, CIFAR mean/std) on ``device``."""
    from diffdfkd.models import create_model
    from diffdfkd.models.teacher import Teacher

    torch.manual_seed(0)
    model = create_model("resnet34", num_classes=len(CIFAR10_CLASSES))
    teacher = Teacher(
        model, input_size=32, in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD, class_names=CIFAR10_CLASSES
    )
    return teacher.to(device)


def build_components(tiny: bool, pipeline: str, device: torch.device, settings: Settings) -> Any:
    """SD 1.5 parts (random weights, or ``pipeline``'s) with ``settings`` applied, except compile and
    checkpointing (``finish_settings``: FLOPs are counted before, on the eager models)."""
    from sd15 import sd15_components

    from diffdfkd.diffusion.components import load_components
    from diffdfkd.diffusion.speed import apply_speed_settings

    if pipeline:
        components = load_components(pipeline, device=device, dtype=settings.dtype, scheduler="ddpm")
    else:
        components = sd15_components(tiny, device, settings.dtype)
    return apply_speed_settings(
        components,
        attention=settings.attention,
        channels_last=settings.channels_last,
        grad_checkpointing=False,
    )


def finish_settings(
    components: Any, teacher: torch.nn.Module, settings: Settings, compile_mode: str | None
) -> None:
    """Checkpointing and ``torch.compile`` (last: it cannot be undone)."""
    from diffdfkd.diffusion.speed import apply_speed_settings

    apply_speed_settings(
        components,
        teacher,
        channels_last=settings.channels_last,
        grad_checkpointing=settings.grad_checkpointing,
        compile=settings.compile,
        compile_mode=compile_mode,
    )


@functools.cache
def taesd_folder() -> str:
    """A random-weight TAESD saved once to a temporary folder: timed rows load it as a user's would be."""
    from sd15 import taesd

    folder = Path(tempfile.mkdtemp(prefix="taesd_")) / "vae_tiny"
    taesd().save_pretrained(folder)
    return str(folder)


def make_source(
    components: Any, teacher: torch.nn.Module, row: Row, batch: int, num_steps: int, guidance: Any
):
    """A ``DiffusionSource`` for ``batch`` samples, ``num_steps`` DDPM steps, CFG 3, class-free prompt,
    BN statistics per sample and no Latent CutMix (the reference's batch of one: same mathematics)."""
    from diffdfkd.config import ExperimentConfig, replace
    from diffdfkd.synth.diffusion_source import DiffusionSource

    config = replace(
        ExperimentConfig(),
        **{
            "generator.num_steps": num_steps,
            "generator.cfg_scale": CFG_SCALE,
            "generator.resolution": components.native_resolution // row.resolution_divisor,
            "guidance": dataclasses.asdict(guidance),
            "generator.guidance_decoder": taesd_folder() if row.tiny_decoder else "",
            "cutmix.enabled": False,
            "synth.batch_size": batch,
            "synth.group_size": 1,
            "synth.samples_per_class_in_group": 1,
        },
    )
    return DiffusionSource(config, teacher, components=components)


def batch_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample indices ``[B]`` and one-hot targets ``[B, 10]`` cycling over the classes."""
    indices = torch.arange(batch)
    return indices, F.one_hot(indices % len(CIFAR10_CLASSES), len(CIFAR10_CLASSES)).float()


# ---------------------------------------------------------------------------------------------------
# Measuring per step.


class StepProbe:
    """A scheduler wrapper that reads ``read()`` when the schedule is set and after every ``step``.

    The sampler calls ``set_timesteps`` once, then ``step`` once per step, so consecutive readings
    bracket one sampling step each (guidance, CFG passes and the scheduler update).
    """

    def __init__(self, scheduler: Any, read: Callable[[], tuple[float, ...]]) -> None:
        self._scheduler = scheduler
        self._read = read
        self.readings: list[tuple[float, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        self._scheduler.set_timesteps(*args, **kwargs)
        self.readings = [self._read()]

    def step(self, *args: Any, **kwargs: Any) -> Any:
        out = self._scheduler.step(*args, **kwargs)
        self.readings.append(self._read())
        return out


@dataclass
class StepMeasure:
    """Per-step deltas of a reading: ``steps[i]`` for step ``i``, ``final`` for the final decode;
    ``guided``: the steps the guide ran at."""

    steps: list[tuple[float, ...]]
    final: tuple[float, ...]
    guided: set[int]

    def mean(self, guided: bool, index: int = 0) -> float | None:
        values = [d[index] for i, d in enumerate(self.steps) if (i in self.guided) == guided]
        return sum(values) / len(values) if values else None


def measured_run(source: Any, batch: int, read: Callable[[], tuple[float, ...]]) -> StepMeasure:
    """Run ``source.generate`` once with a ``StepProbe`` reading ``read`` at each step boundary."""
    probe = StepProbe(source.components.scheduler, read)
    source.components.scheduler = probe
    try:
        out = source.generate(*batch_inputs(batch))
        end = read()
    finally:
        source.components.scheduler = probe._scheduler
    r = probe.readings

    def delta(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(y - x for x, y in zip(a, b, strict=True))

    steps = [delta(r[i], r[i + 1]) for i in range(len(r) - 1)]
    return StepMeasure(steps, delta(r[-1], end), {int(log["step"]) for log in out.logs})


def math_attention(device: torch.device):
    """FlopCounterMode counts the CUDA fused attention kernels but not the CPU one: off CUDA, count
    through the math kernel (the same matmuls)."""
    if device.type == "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def count_flops(components: Any, teacher: torch.nn.Module, row: Row, batch: int, clock: bool = False) -> dict:
    """FLOPs of one guided step, one unguided step and the final decode of ``row`` (2-step schedule,
    guidance at step 0 only), counted on the real path. ``clock``: also wall seconds per step (with
    the counter's overhead)."""
    source = make_source(components, teacher, row, batch, 2, guidance_for(row, every=2, window_end=1.0))
    counter = FlopCounterMode(display=False)

    def read() -> tuple[float, ...]:
        return (float(counter.get_total_flops()), time.perf_counter())

    with counter, math_attention(components.device):
        m = measured_run(source, batch, read)
    if m.guided != {0}:
        raise RuntimeError(f"expected guidance at step 0 only, got steps {sorted(m.guided)}")
    result = {"guided_step": m.steps[0][0], "unguided_step": m.steps[1][0], "final_decode": m.final[0]}
    if clock:
        result["seconds"] = {
            "guided_step": m.steps[0][1],
            "unguided_step": m.steps[1][1],
            "final_decode": m.final[1],
        }
    return result


def per_image(row: Row, batch: int, guided: float, unguided: float | None, final: float) -> float:
    """Extrapolate per-step figures of a batch to one image of the 50-step schedule."""
    n_g = guided_steps(guidance_for(row))
    if n_g < SCHEDULE_STEPS and unguided is None:
        raise ValueError(f"row {row.name}: no unguided step was measured; use --steps >= 2")
    return (n_g * guided + (SCHEDULE_STEPS - n_g) * (unguided or 0.0) + final) / batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_row(components: Any, teacher: torch.nn.Module, row: Row, batch: int, steps: int) -> dict:
    """Warm up, then time ``steps`` steps of ``row``; seconds per step and peak device memory."""
    device = components.device
    source = make_source(components, teacher, row, batch, steps, guidance_for(row))

    def clock() -> tuple[float, ...]:
        synchronize(device)
        return (time.perf_counter(),)

    start = time.perf_counter()
    source.generate(*batch_inputs(batch))  # warm-up: compilation, allocator, kernel selection
    synchronize(device)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    m = measured_run(source, batch, clock)
    if not m.guided:
        raise ValueError(f"row {row.name}: no guided step among the {steps} timed steps")
    return {
        "guided_step": m.mean(True),
        "unguided_step": m.mean(False),
        "final_decode": m.final[0],
        "warmup_s": warmup,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def matmul_peak(device: torch.device) -> dict:
    """Measured matmul throughput (FLOP/s): bf16 8192^3 on CUDA, fp32 1024^3 elsewhere; best of 3."""
    cuda = device.type == "cuda"
    n, dtype, reps = (8192, torch.bfloat16, 20) if cuda else (1024, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return {"flops_per_s": 2 * n**3 / best, "dtype": str(dtype).removeprefix("torch."), "n": n}


# ---------------------------------------------------------------------------------------------------
# The benchmark.


def run_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Measure each requested row; rows that share compute settings share one set of loaded parts."""
    from diffdfkd.guidance.guide import GuidanceError

    compile_on = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    groups: dict[Settings, list[Row]] = {}
    for name in args.modes:
        row = ROWS[name]
        settings = settings_for(
            row.settings, batch=args.batch_size, device=device, compile=compile_on, grad_ckpt=args.grad_ckpt
        )
        groups.setdefault(settings, []).append(row)
    results: dict[str, dict] = {}
    for settings, rows in groups.items():
        components = build_components(args.tiny, args.pipeline, device, settings)
        teacher = cifar_teacher(device)
        # Every op is per sample (BN statistics too, groups of 1): count at batch 1, OOM-safe.
        flops = {row.name: count_flops(components, teacher, row, 1) for row in rows}
        finish_settings(components, teacher, settings, args.compile_mode)
        for row in rows:
            print(f"[speed] {row.name}: timing {args.steps} steps at batch {settings.batch}", flush=True)
            result = describe(row, settings, components, flops[row.name])
            try:
                times = time_row(components, teacher, row, settings.batch, args.steps)
            except (GuidanceError, torch.OutOfMemoryError) as error:  # reported in the row, not hidden
                result["error"] = f"{type(error).__name__}: {error}"
                print(f"[speed] {row.name} failed: {result['error']}", file=sys.stderr, flush=True)
            else:
                result.update(summarise_times(row, settings.batch, times))
            results[row.name] = result
        del components, teacher
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return [results[name] for name in args.modes]


def describe(row: Row, settings: Settings, components: Any, flops: dict) -> dict:
    """The row's settings and its counted FLOPs, scaled to one image of the 50-step schedule."""
    guidance = guidance_for(row)
    resolution = components.native_resolution // row.resolution_divisor
    return {
        "mode": row.name,
        "description": row.description,
        "exact": row.exact,
        "accuracy_effect": row.accuracy,
        "settings": dataclasses.asdict(settings),
        "guidance": {"mode": row.mode, "every": row.every, "window": [0.0, row.window_end]},
        "resolution_px": resolution,
        "cfg_scale": CFG_SCALE,
        "guided_steps_of_50": guided_steps(guidance),
        "flops": {
            **{k: int(v) for k, v in flops.items()},
            "counted_at_batch": 1,
            "per_image": per_image(
                row, 1, flops["guided_step"], flops["unguided_step"], flops["final_decode"]
            ),
        },
    }


def summarise_times(row: Row, batch: int, times: dict) -> dict:
    """Seconds per step (per batch), seconds per image and images/s for the 50-step schedule."""
    s_image = per_image(row, batch, times["guided_step"], times["unguided_step"], times["final_decode"])
    return {
        "s_per_guided_step": times["guided_step"],
        "s_per_guided_step_per_image": times["guided_step"] / batch,
        "s_per_unguided_step": times["unguided_step"],
        "s_final_decode": times["final_decode"],
        "s_per_image": s_image,
        "images_per_s": 1.0 / s_image,
        "warmup_s": times["warmup_s"],
        "peak_mem_gib": times["peak_mem_gib"],
    }


def add_derived(rows: list[dict], peak: dict) -> None:
    """Speed-up against the reference row and MFU against the measured matmul peak."""
    ref = next((r for r in rows if r["mode"] == "reference" and "s_per_image" in r), None)
    for r in rows:
        if "s_per_image" not in r:
            continue
        achieved = r["flops"]["per_image"] / r["s_per_image"]
        r["achieved_flops_per_s"] = achieved
        r["mfu"] = achieved / peak["flops_per_s"]
        if ref is not None:
            r["speedup_vs_reference"] = ref["s_per_image"] / r["s_per_image"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # no /proc/cpuinfo (not Linux): keep platform's name
    return f"CPU {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def environment(device: torch.device, argv: Iterable[str]) -> dict:
    import diffusers
    import transformers

    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "command": "python benchmarks/synth_throughput.py " + " ".join(argv),
    }


def notes(args: argparse.Namespace, device: torch.device) -> list[str]:
    out = []
    if device.type != "cuda":
        out.append(
            "CPU SMOKE RUN"
            + (" WITH TINY CONFIGS" if args.tiny else "")
            + ": these are not Stable Diffusion "
            "GPU figures. The H100 figures are STILL TO BE MEASURED; on a GPU run: `"
            + GPU_COMMAND
            + "`. On CPU "
            "every row runs in fp32 (the half-precision rows included), torch.compile is off unless "
            "--compile on, and peak device memory is not measured."
        )
    if args.tiny:
        out.append(
            "Tiny configs: the SD 1.5 structure (UNet 3 x CrossAttnDownBlock2D + DownBlock2D, VAE factor 8, "
            "77 text tokens) at tiny widths, native 128 px; the teacher is the full CIFAR ResNet-34, so it "
            "dominates the cost here, unlike at SD scale."
        )
    out += [
        f"Timing: one warm-up run (compilation included, excluded from the figures), then {args.steps} timed "
        f"steps of a {args.steps}-step schedule through DiffusionSource.generate -> sample() -> TeacherGuide, "
        "each step timed at its scheduler.step (device synchronised), extrapolated to the 50-step schedule: "
        "s/image = (n_guided * t_guided + n_unguided * t_unguided + t_final_decode) / batch.",
        "FLOPs: FlopCounterMode (matmuls, convolutions, attention; not elementwise ops, norms or the "
        "teacher's bicubic resize) on one guided and one unguided step of the same path at batch 1 (every op "
        "is per sample), eager, without gradient checkpointing (its recomputation is not counted), scaled to "
        "the 50-step schedule. Prompt encoding (once per class) is excluded from FLOPs and time.",
        "Weights are random (architecture from config values), CFG 3, class-free prompt, BN statistics per "
        "sample, no Latent CutMix (it costs a few elementwise ops at 4 steps). MFU = counted FLOPs / time / "
        "measured matmul peak.",
    ]
    return out


def adapt_rows(args: argparse.Namespace, device: torch.device) -> dict:
    """The LoRA rows: adapt-generator steps at ``--adapt-ranks`` (``lora_adapt.py``), if any."""
    if not args.adapt_ranks:
        return {}
    from lora_adapt import sd15_meta_rows, sd15_real_rows
    from sd15 import SD15_VAE, TINY_VAE

    resolution = int((TINY_VAE if args.tiny else SD15_VAE)["sample_size"])
    print(f"[speed] adapt-generator steps at ranks {args.adapt_ranks}, {resolution} px", flush=True)
    real = sd15_real_rows(args.adapt_ranks, str(device), args.adapt_group, resolution, tiny=args.tiny)
    return {"adapt_rows": real, "adapt_memory_sd15_meta": sd15_meta_rows(args.adapt_ranks)}


def adapt_markdown(result: dict) -> list[str]:
    """The LoRA rows' table (empty without them)."""
    if not result.get("adapt_rows"):
        return []
    memory = {r["row"]: r for r in result["adapt_memory_sd15_meta"]}
    lines = ["", "## adapt-generator: LoRA against the whole UNet (one step; benchmarks/lora_adapt.py)", "",
             "| row | trainable params | px | group | s/step | Adam state GiB (measured) | peak GiB | SD 1.5 "
             "training memory GiB (grads + Adam + frozen copy, counted) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["adapt_rows"]:
        m = memory[r["row"]]
        counted = m["grad_gib"] + m["adam_state_gib"] + m["frozen_copy_gib"]
        lines.append(f"| {r['row']} | {r['trainable_params']:,} | {r['resolution_px']} | {r['group']} "
                     f"| {r['s_per_step']:.3g} | {r['adam_state_gib_measured']:.3g} | "
                     f"{fmt(r.get('peak_mem_gib'), '.2f')} | {counted:.3g} |")  # fmt: skip
    return lines


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    env, peak = result["environment"], result["matmul_peak"]
    peak_label = (
        f"measured {peak['dtype']} {peak['n']}^3 matmul peak {peak['flops_per_s'] / 1e12:.3f} TFLOP/s"
    )
    title = "Synthesis throughput" + (
        " (CPU smoke run, tiny configs)" if result["tiny"] else " (SD 1.5 architecture)"
    )
    lines = [f"# {title}", "", f"Device: {env['device']}; torch {env['torch']}, diffusers {env['diffusers']}.",
             f"Command: `{env['command']}`", ""]  # fmt: skip
    lines += [f"- {n}" for n in result["notes"]] + [""]
    lines += [
        f"| row | exact | batch | dtype | attention | ch-last | compile | ckpt | px | guided/50 | s/guided step "
        f"(batch) | s/image | images/s | vs ref | peak GiB | GFLOP/image | MFU ({peak_label}) | accuracy effect |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        s = r["settings"]
        flags = [s["batch"], s["dtype"], s["attention"], "y" if s["channels_last"] else "n",
                 "y" if s["compile"] else "n", "y" if s["grad_checkpointing"] else "n"]  # fmt: skip
        timing = (
            [f"error: {r['error']}"] + ["-"] * 4
            if "error" in r
            else [
                fmt(r["s_per_guided_step"], ".4g"),
                fmt(r["s_per_image"], ".4g"),
                fmt(r["images_per_s"], ".4g"),
                fmt(r.get("speedup_vs_reference"), ".2f"),
                fmt(r["peak_mem_gib"], ".2f"),
            ]
        )
        mfu = fmt(r.get("mfu") and 100 * r["mfu"], ".1f") + ("%" if "mfu" in r else "")
        cells = [r["mode"], "yes" if r["exact"] else "no", *flags, r["resolution_px"], r["guided_steps_of_50"],
                 *timing, f"{r['flops']['per_image'] / 1e9:.4g}", mfu, r["accuracy_effect"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += adapt_markdown(result)
    return "\n".join(lines) + "\n"


def benchmark(args: argparse.Namespace, device: torch.device, argv: list[str]) -> dict:
    """All requested rows plus the matmul peak; returns the JSON-ready result."""
    peak = matmul_peak(device)
    print(f"[speed] matmul peak {peak['flops_per_s'] / 1e12:.3f} TFLOP/s ({peak['dtype']})", flush=True)
    rows = run_rows(args, device)
    add_derived(rows, peak)
    return {
        **adapt_rows(args, device),
        "kind": "throughput",
        "tiny": args.tiny,
        "schedule_steps": SCHEDULE_STEPS,
        "timed_steps": args.steps,
        "environment": environment(device, argv),
        "matmul_peak": peak,
        "notes": notes(args, device),
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------------
# The full-architecture check on CPU: one real guided step at a reduced size, FLOPs at 512 px on meta.


def decomposed_flops(
    components: Any,
    teacher: torch.nn.Module,
    mode: str,
    batch: int,
    latent: int,
    guidance_vae: torch.nn.Module | None = None,
) -> dict:
    """FLOPs of one guided step (``mode``), one unguided step and the final decode, counted by calling
    the sampler's own pieces (``cfg_eps``, ``predict_x0``, ``decode_latents``, the guide's losses) in the
    order ``sample`` calls them, on shapes only (works on the meta device: no ``.item()``).
    ``guidance_vae``: the decoder of the guidance gradient (TAESD), else the VAE's."""
    from diffdfkd.diffusion.components import decode_latents
    from diffdfkd.diffusion.denoiser import cfg_eps, predict_x0
    from diffdfkd.guidance.teacher_loss import BNStatistics, Units, cross_entropy

    device = next(components.unet.parameters()).device
    dim = components.text_encoder.config.hidden_size
    length = components.tokenizer.model_max_length
    cond = torch.zeros(batch, length, dim, device=device)
    uncond = torch.zeros(batch, length, dim, device=device)
    targets = torch.zeros(batch, len(CIFAR10_CLASSES), device=device)
    t = torch.tensor(500, device=device)
    abar = 0.5  # its value does not change any count

    def eps_at(z: torch.Tensor) -> torch.Tensor:
        return cfg_eps(components, z, t, cond, uncond, CFG_SCALE, abar)

    def count(fn: Callable[[], Any]) -> int:
        counter = FlopCounterMode(display=False)
        with counter, math_attention(torch.device("cpu")):
            fn()
        return int(counter.get_total_flops())

    def guided() -> None:
        z = torch.zeros(batch, components.latent_channels, latent, latent, device=device, requires_grad=True)
        with torch.set_grad_enabled(mode != "detach_unet"):
            eps = eps_at(z)
        images = decode_latents(components, predict_x0(z, eps, abar), vae=guidance_vae)
        with BNStatistics(teacher.network, Units("sample")) as bn:
            logits = teacher(images).float()
            loss = cross_entropy(logits, targets, Units("sample")) + 0.1 * bn.loss()
        torch.autograd.grad(loss, z)
        if mode != "one_pass":  # the re-denoise at the updated z_t
            with torch.no_grad():
                eps_at(z.detach())

    z0 = torch.zeros(batch, components.latent_channels, latent, latent, device=device)
    with torch.no_grad():
        unguided = count(lambda: eps_at(z0))
        final = count(lambda: decode_latents(components, z0))
    return {"guided_step": count(guided), "unguided_step": unguided, "final_decode": final}


def full_arch_check(args: argparse.Namespace, argv: list[str]) -> dict:
    """Validate the full SD 1.5 build with one real guided step on the CPU at ``--check-resolution``,
    and count every row's FLOPs at 512 px on the meta device, cross-checked at the reduced size."""
    from sd15 import sd15_components, taesd

    device = torch.device("cpu")
    check_res = args.check_resolution
    reference = ROWS["reference"]
    print(f"[speed] building SD 1.5 (random weights) on CPU; one guided step at {check_res} px", flush=True)
    start = time.perf_counter()
    components = sd15_components(False, device, "fp32")
    teacher = cifar_teacher(device)
    build_s = time.perf_counter() - start
    params = {
        part: sum(p.numel() for p in getattr(components, part).parameters())
        for part in ("unet", "vae", "text_encoder")
    }
    ref_at_check = dataclasses.replace(
        reference, resolution_divisor=components.native_resolution // check_res
    )
    real = count_flops(components, teacher, ref_at_check, 1, clock=True)
    del components
    gc.collect()

    meta = dataclasses.replace(sd15_components(False, "meta", "fp32"), device=device)  # autocast needs cpu
    teacher_meta = cifar_teacher("cpu").to("meta")
    taesd_meta = taesd("cpu").to("meta")
    factor = meta.vae_scale_factor
    meta_check = decomposed_flops(meta, teacher_meta, "full", 1, check_res // factor)
    agrees = all(meta_check[k] == real[k] for k in meta_check)
    rows = []
    for name in DEFAULT_MODES:
        row = ROWS[name]
        latent = meta.native_resolution // row.resolution_divisor // factor
        counted = decomposed_flops(
            meta, teacher_meta, row.mode, 1, latent, taesd_meta if row.tiny_decoder else None
        )
        rows.append(
            {
                "mode": name,
                "exact": row.exact,
                "description": row.description,
                "resolution_px": latent * factor,
                "guided_steps_of_50": guided_steps(guidance_for(row)),
                "flops": {**counted, "per_image": per_image(row, 1, *counted.values())},
            }
        )
    return {
        "kind": "full_arch_check",
        "environment": environment(device, argv),
        "parameters": params,
        "build_s": build_s,
        "check_resolution_px": check_res,
        "real_step_at_check_resolution": real,
        "meta_decomposition_at_check_resolution": meta_check,
        "meta_matches_real_count": agrees,
        "rows_at_512px_batch1": rows,
        "notes": [
            "FLOPs are COUNTS (FlopCounterMode: matmuls, convolutions, attention; not elementwise ops, norms or "
            "the teacher's bicubic resize), not timings. Full SD 1.5 architecture (UNet, VAE, CLIP ViT-L/14 text "
            "encoder from SD 1.5's config values, random weights), CIFAR ResNet-34 teacher at 32 px, CFG 3, "
            "batch 1, per image of the 50-step schedule.",
            f"Real run: the full architecture on this CPU (fp32), one guided and one unguided step at {check_res} "
            "px through DiffusionSource.generate -> sample() (a 2-step schedule), counted; its wall seconds "
            "include the counter's overhead and the math attention kernel.",
            "512 px: counted on the meta device (shapes only) by calling the sampler's own pieces in sample()'s "
            f"order; the same decomposition at {check_res} px "
            + ("EQUALS" if agrees else "DIFFERS FROM")
            + " the real count, step by step.",
            "H100 timings are STILL TO BE MEASURED: `" + GPU_COMMAND + "`.",
        ],
    }


def check_markdown(result: dict) -> str:
    real, env = result["real_step_at_check_resolution"], result["environment"]
    res = result["check_resolution_px"]
    params = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in result["parameters"].items())
    lines = [
        "# SD 1.5 architecture: FLOP counts (CPU, counted, not timed)",
        "",
        f"Device: {env['device']}; torch {env['torch']}, diffusers {env['diffusers']}.",
        f"Command: `{env['command']}`",
        "",
        *[f"- {n}" for n in result["notes"]],
        "",
        f"Parameters: {params}. Real run at {res} px, batch 1, fp32: guided step "
        f"{real['guided_step'] / 1e9:.1f} GFLOP in {real['seconds']['guided_step']:.1f} s, unguided step "
        f"{real['unguided_step'] / 1e9:.1f} GFLOP in {real['seconds']['unguided_step']:.1f} s, final decode "
        f"{real['final_decode'] / 1e9:.1f} GFLOP; meta decomposition at {res} px matches: "
        f"{result['meta_matches_real_count']}.",
        "",
        "| row | exact | px | guided/50 | GFLOP / guided step | GFLOP / unguided step | GFLOP final decode "
        "| TFLOP / image (50 steps) | vs reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = result["rows_at_512px_batch1"][0]["flops"]["per_image"]
    for r in result["rows_at_512px_batch1"]:
        f = r["flops"]
        lines.append(
            f"| {r['mode']} | {'yes' if r['exact'] else 'no'} | {r['resolution_px']} | {r['guided_steps_of_50']} "
            f"| {f['guided_step'] / 1e9:.1f} | {f['unguided_step'] / 1e9:.1f} | {f['final_decode'] / 1e9:.1f} "
            f"| {f['per_image'] / 1e12:.2f} | {f['per_image'] / ref:.2f}x |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny widths of the SD 1.5 structure (CPU smoke run)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<n>")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON and Markdown results")
    parser.add_argument(
        "--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(ROWS), help="rows to measure"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the rows with our settings")
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per row (>= 2), after a warm-up run"
    )
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto", help="torch.compile (auto: CUDA)"
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode, e.g. max-autotune, reduce-overhead (CUDA graphs)",
    )
    parser.add_argument(
        "--no-grad-ckpt", dest="grad_ckpt", action="store_false", help="no gradient checkpointing in our rows"
    )
    parser.add_argument("--pipeline", default="", help="a local SD pipeline folder instead of random weights")
    parser.add_argument(
        "--adapt-ranks",
        type=int,
        nargs="*",
        default=[0, 4, 16],
        help="LoRA rows: adapt-generator ranks (0: full)",
    )
    parser.add_argument(
        "--adapt-group", type=int, default=2, help="images per adapt-generator step (LoRA rows)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument(
        "--full-arch-check", action="store_true", help="only the full SD 1.5 CPU check (see top)"
    )
    parser.add_argument(
        "--check-resolution", type=int, default=128, help="image side of the CPU check's real step"
    )
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (a guided and an unguided step are timed)")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.check_resolution % 8 or not 64 <= args.check_resolution <= 512:
        parser.error("--check-resolution must be a multiple of 8 in [64, 512]")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (or the full-architecture check), write JSON + Markdown, return the result."""
    from diffdfkd.runtime import resolve_device

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.full_arch_check:
        result, stem, text = full_arch_check(args, argv), "cpu_sd15_flops", check_markdown
    else:
        device = resolve_device(args.device)
        result = benchmark(args, device, argv)
        stem, text = f"{device.type}_{'tiny' if args.tiny else 'sd15'}", markdown
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text(result))
    print(text(result))
    return result


if __name__ == "__main__":
    main()

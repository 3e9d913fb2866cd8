"""The teacher wrapper and checkpoint loading.

``Teacher`` owns everything about feeding the teacher: its input size and channels, its mean/std
normalisation, eval mode and frozen weights. Callers hand it images in [0, 1] of any size and get
logits; nobody else re-implements "resize and normalise for the teacher".
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from diffdfkd.errors import UserError
from diffdfkd.models.exported import is_exported_program, load_exported
from diffdfkd.models.torchscript import with_visible_batchnorm
from diffdfkd.models.zoo import create_model
from diffdfkd.runtime import batchnorm_modules


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be loaded into the requested model, with the reason."""


class Teacher(nn.Module):
    """A frozen classifier that takes images in [0, 1].

    ``forward(images [B, C, H, W] in [0, 1]) -> logits [B, K]``: resizes (bicubic, antialiased) to
    ``input_size``, matches channels (RGB -> grey by averaging, grey -> RGB by copying), normalises
    with ``mean``/``std``. The inner ``model`` stays in eval mode with ``requires_grad=False``;
    gradients still flow to the input images. ``origin``: what the network was loaded from, for reports.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str],
        origin: str = "",
    ) -> None:
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
        self.model = model.eval()
        for parameter in model.parameters():  # works for TorchScript modules too
            parameter.requires_grad_(False)
        self.input_size = input_size
        self.in_channels = in_channels
        self.class_names = tuple(class_names)
        self.origin = origin
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def network(self) -> nn.Module:
        """The wrapped classifier: takes the normalised ``[B, in_channels, input_size, input_size]`` of
        ``preprocess``; what forward hooks (BatchNorm statistics) and memory-format or compile
        settings act on."""
        return self.model

    def bn_layers(self) -> list[nn.Module]:
        """The wrapped classifier's BatchNorm layers (empty for a compiled TorchScript model, whose
        layers no hook sees: ``guidance.teacher_loss.batchnorm_layers`` says what to do then)."""
        return batchnorm_modules(self.model)

    def train(self, mode: bool = True) -> Teacher:
        """The teacher is always in eval mode: BatchNorm uses its running statistics."""
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> the normalised ``[B, in_channels, S, S]`` the model expects."""
        if images.ndim != 4:
            raise ValueError(f"teacher expects images [B, C, H, W], got shape {tuple(images.shape)}")
        if images.shape[1] != self.in_channels:
            if self.in_channels == 1:
                images = images.mean(dim=1, keepdim=True)
            elif images.shape[1] == 1:
                images = images.expand(-1, self.in_channels, -1, -1)
            else:
                raise ValueError(f"teacher takes {self.in_channels} channels, got {images.shape[1]}")
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bicubic", antialias=True
            )
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))


ACCEPTED = (
    "accepted are torch.export programs (.pt2, torch.export.save) and TorchScript files (torch.jit.save) "
    "as teachers, safetensors files and weights-only torch state dicts (torch.save(model.state_dict(), ...))"
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a weights-only torch checkpoint.

    Accepts a bare state dict or one nested under ``state_dict``/``model`` (the CMI/Fast-Datafree
    checkpoints nest it under ``state_dict``); strips a DDP ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if is_exported_program(path):  # load_teacher takes it before a state dict is ever read
        raise CheckpointError(
            f"{path} is a torch.export program (.pt2): it carries its own network, so it is a teacher "
            f"(teacher.weights), not a state dict for a zoo model; {ACCEPTED}"
        )
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path} is not a valid safetensors file: {error}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "unsupported global" not in str(error).lower():  # not code: bytes that are no pickle at all
                raise CheckpointError(
                    f"{path} is not a torch checkpoint (damaged, or another format); {ACCEPTED}"
                ) from None
            raise CheckpointError(
                f"{path} is not a weights-only checkpoint (it pickles code, which is never loaded "
                f"for safety); re-save its state_dict with torch.save(model.state_dict(), ...). "
                f"Detail: {str(error).splitlines()[0]}"
            ) from None
        except Exception as error:  # torch.load raises many types on a file that is not a checkpoint
            detail = (str(error).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(
                f"{path} is not a torch checkpoint ({type(error).__name__}: {detail}); {ACCEPTED}"
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model`` strictly, with errors that name what does not fit."""
    state = read_state_dict(path)
    own = model.state_dict()
    # BatchNorm's step counter is not a weight: files saved without it (ours, older torch) still fit.
    state |= {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        details = "; ".join(f"{k}: file {f} vs model {m}" for k, f, m in wrong[:4])
        raise CheckpointError(
            f"{path} has tensors of other shapes than the model (wrong number of classes or "
            f"channels?): {details}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model


def export_weights(model: torch.nn.Module, path: str | Path, half: bool = True) -> Path:
    """Save ``model``'s state dict as safetensors (fp16 floats when ``half``, to keep shipped files small)."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save(state))  # not save_file: it creates the file with mode 0600 whatever the umask
    return path


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (``torch.jit.save``), which carries its own architecture."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def carries_architecture(path: Path) -> bool:
    """True for a file that holds its network, not only weights: TorchScript or ``torch.export`` (.pt2)."""
    return path.is_file() and (is_exported_program(path) or is_torchscript(path))


def load_teacher(
    arch: str,
    weights: str | Path,
    *,
    class_names: Sequence[str],
    input_size: int = 32,
    in_channels: int = 3,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Teacher:
    """Build a ``Teacher`` from a zoo name plus a weights file, a ``torch.export`` (.pt2) or TorchScript
    file, or ``timm:<name>``.

    ``arch`` is ignored when ``weights`` is a .pt2 or TorchScript file (each carries its network); their
    BatchNorm ops become modules that the BN-statistics loss hooks (``models.exported``,
    ``models.torchscript``), and a .pt2 must have been exported for ``[B, in_channels, input_size,
    input_size]`` with a free batch size.
    Raises ``CheckpointError`` (``ExportedTeacherError`` for a .pt2) when the file does not fit, naming
    the wrong keys or shapes.
    """
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError("a teacher needs at least two class names")
    weights = Path(weights)
    origin = f"{arch} weights {weights.name}"
    if weights.is_file() and is_exported_program(weights):
        model, origin = load_exported(weights, in_channels=in_channels, input_size=input_size)
    elif weights.is_file() and is_torchscript(weights):
        model: nn.Module = torch.jit.load(str(weights), map_location="cpu")
        probe = torch.rand(2, in_channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
        model = with_visible_batchnorm(model, probe)
        hooked = len(batchnorm_modules(model))
        origin = f"TorchScript, {hooked} BatchNorm layers hooked"
    elif arch.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ImportError("timm teachers need the optional extra: pip install 'diffdfkd[timm]'") from None
        model = timm.create_model(arch.removeprefix("timm:"), num_classes=num_classes, in_chans=in_channels)
        load_weights(model, weights)
    else:
        model = load_weights(create_model(arch, num_classes=num_classes, in_channels=in_channels), weights)
    teacher = Teacher(
        model,
        input_size=input_size,
        in_channels=in_channels,
        mean=mean,
        std=std,
        class_names=class_names,
        origin=origin,
    )
    try:
        with torch.no_grad():
            out = teacher(torch.zeros(1, in_channels, input_size, input_size))
    except (RuntimeError, AssertionError) as error:  # an exported program's shape guards assert
        raise CheckpointError(
            f"the teacher {weights} cannot take inputs of shape [1, {in_channels}, {input_size}, "
            f"{input_size}] (teacher.in_channels, teacher.input_size): {str(error).splitlines()[0]}"
        ) from None
    if out.shape != (1, num_classes):
        raise CheckpointError(f"{weights} gives {tuple(out.shape)} logits, expected {num_classes} classes")
    return teacher


@dataclass(frozen=True)
class TeacherSpec:
    """Where a teacher comes from and how to feed it: the arguments of ``load_teacher``.

    Worlds hand their shipped teacher as one (``World.teacher_spec()``); a config's ``teacher`` block
    fills one in (``diffdfkd.worlds.teacher_spec``).
    """

    arch: str
    weights: Path
    class_names: tuple[str, ...]
    input_size: int = 32
    in_channels: int = 3
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


def build_teacher(spec: TeacherSpec) -> Teacher:
    """``load_teacher`` with the fields of ``spec``."""
    return load_teacher(
        spec.arch,
        spec.weights,
        class_names=spec.class_names,
        input_size=spec.input_size,
        in_channels=spec.in_channels,
        mean=spec.mean,
        std=spec.std,
    )

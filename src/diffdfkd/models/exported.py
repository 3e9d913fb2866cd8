"""Teachers from ``torch.export``: a ``.pt2`` file (``torch.export.save``) whose BatchNorm layers the
BN-statistics loss can see.

An ``ExportedProgram`` runs its BatchNorm layers as graph ops, not as modules, so no forward hook sees
their inputs. ``hookable_module`` turns the program into a plain ``torch.fx`` graph in which each
eval-mode batch-norm op becomes a call of a real BatchNorm module (``GraphBatchNorm``) holding the op's
weight, bias and running statistics: ``y = (x - running_mean) / sqrt(running_var + eps) * w + b``
exactly as before, and a hook on it sees the op's input ``x [B, C, ...]``. Both forms of the op are
lifted: ``aten.batch_norm`` (``torch.export.export``'s default graph) and
``aten._native_batch_norm_legit_no_training`` (after ``run_decompositions()``). TorchScript teachers
reach the same graph through PyTorch's converter (``models.torchscript``).

Safety: ``torch.export.load`` reads the program's JSON graph and its tensors, but it also unpickles
parts of some archives (payloads saved with pickle, custom objects, the sample inputs when they do not
load weights-only); PyTorch itself warns never to load a ``.pt2`` from an untrusted source. We add
nothing that runs code: no pickle of our own, no ``exec``. Give a ``.pt2`` only from a source you would
run code from.
"""

from __future__ import annotations

import operator
import zipfile
from pathlib import Path

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from diffdfkd.errors import UserError
from diffdfkd.runtime import BatchNormBase


class ExportedTeacherError(UserError, ValueError):
    """A ``.pt2`` file that cannot serve as a teacher, with the reason and the way out."""


class GraphBatchNorm(BatchNormBase):
    """A BatchNorm layer lifted out of a graph: eval-mode ``batch_norm`` of ``[B, C, ...]``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects [B, C, ...], got shape {tuple(input.shape)}")


def is_exported_program(path: Path) -> bool:
    """True for an archive written by ``torch.export.save`` (it names its ``archive_format``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("archive_format") for name in archive.namelist())


def _attr(graph_module: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node names (``None`` for a missing optional argument)."""
    if node is None:
        return None
    value = graph_module
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _eval_batchnorm(node: fx.Node) -> tuple[tuple, fx.Node] | None:
    """``((x, weight, bias, mean, var, momentum, eps), output node)`` of an eval-mode batch-norm op
    whose statistics are graph attributes; ``None`` for any other node."""
    if node.op != "call_function":
        return None
    if node.target is torch.ops.aten.batch_norm.default:
        x, weight, bias, mean, var, training, momentum, eps = node.args[:8]
        args, output = (x, weight, bias, mean, var, momentum, eps), node
        if training:
            return None
    elif node.target is torch.ops.aten._native_batch_norm_legit_no_training.default:
        users = list(node.users)  # the op returns (y, mean, rstd); only y may be used
        if len(users) != 1 or users[0].target is not operator.getitem or users[0].args[1] != 0:
            return None
        args, output = tuple(node.args[:7]), users[0]
    else:
        return None
    if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in args[3:5]):
        return None
    return args, output


def lift_batchnorms(graph_module: fx.GraphModule) -> tuple[int, list[str]]:
    """Replace each eval-mode batch-norm op of ``graph_module`` by a ``GraphBatchNorm`` module with the
    same tensors (in place). Returns the number lifted and the names of batch-norm nodes left (ops in
    training mode, or whose statistics are not attributes)."""
    lifted = 0
    for node in list(graph_module.graph.nodes):
        found = _eval_batchnorm(node)
        if found is None:
            continue
        (x, weight, bias, mean, var, momentum, eps), output = found
        running_mean, running_var = _attr(graph_module, mean), _attr(graph_module, var)
        layer = GraphBatchNorm(running_mean.numel(), eps=eps, momentum=momentum, affine=weight is not None)
        with torch.no_grad():
            layer.running_mean.copy_(running_mean)
            layer.running_var.copy_(running_var)
            if weight is not None:
                layer.weight.copy_(_attr(graph_module, weight))
                layer.bias.copy_(_attr(graph_module, bias))
        name = f"batchnorm_{lifted}"
        graph_module.add_submodule(name, layer.eval().requires_grad_(False))
        with graph_module.graph.inserting_before(node):
            call = graph_module.graph.call_module(name, (x,))
        output.replace_all_uses_with(call)
        for dead in dict.fromkeys((output, node)):
            graph_module.graph.erase_node(dead)
        lifted += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    left = [
        n.name for n in graph_module.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)
    ]
    return lifted, left


def hookable_module(program: ExportedProgram) -> tuple[fx.GraphModule, list[str]]:
    """``program`` as a plain ``fx.GraphModule`` (``eval()`` allowed) whose eval-mode batch-norm ops are
    ``GraphBatchNorm`` modules; also the names of batch-norm ops that could not be lifted."""
    exported = program.module()
    graph_module = fx.GraphModule(exported, exported.graph)
    _, left = lift_batchnorms(graph_module)
    return graph_module.eval().requires_grad_(False), left


def exported_input_shape(program: ExportedProgram, path: Path) -> tuple[int | None, ...]:
    """The shape of the program's one input, ``None`` for a dynamic dimension: ``(None, 3, 32, 32)``."""
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(names) != 1:
        raise ExportedTeacherError(f"{path} takes {len(names)} inputs; a teacher takes one image batch")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise ExportedTeacherError(f"{path}'s input is not a tensor; a teacher takes one image batch")
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def describe_shape(shape: tuple[int | None, ...]) -> str:
    """``(None, 3, 32, 32)`` -> ``"[*, 3, 32, 32]"`` (``*``: any size)."""
    return "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"


def load_exported(path: Path, *, in_channels: int, input_size: int) -> tuple[nn.Module, str]:
    """The teacher network of the ``.pt2`` file ``path`` with hookable BatchNorm layers, and a line
    saying what it is (``"torch.export program exported for [*, 3, 32, 32]"``).

    Raises ``ExportedTeacherError`` when the program was exported for other inputs than
    ``[B, in_channels, input_size, input_size]`` with a free batch size, or in training mode.
    """
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch.export.load raises many types on a damaged or foreign archive
        raise ExportedTeacherError(
            f"{path} cannot be loaded by torch.export.load (saved by another torch version, or damaged?): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None
    shape = exported_input_shape(program, path)
    shown = describe_shape(shape)
    wanted = (in_channels, input_size, input_size)
    if len(shape) != 4:
        raise ExportedTeacherError(
            f"{path} was exported for inputs {shown}; a teacher takes images [B, C, H, W]"
        )
    if shape[0] is not None:
        raise ExportedTeacherError(
            f"{path} was exported for a fixed batch of {shape[0]} (inputs {shown}); the teacher runs on "
            f"batches of any size: re-export with dynamic_shapes=({{0: torch.export.Dim('batch')}},)"
        )
    if any(d is not None and d != w for d, w in zip(shape[1:], wanted, strict=True)):
        raise ExportedTeacherError(
            f"{path} was exported for inputs {shown}, but the config gives the teacher "
            f"[B, {in_channels}, {input_size}, {input_size}] (teacher.in_channels={in_channels}, "
            f"teacher.input_size={input_size}): set them to the exported size, or re-export"
        )
    model, left = hookable_module(program)
    if left:
        raise ExportedTeacherError(
            f"{path} has batch-norm ops in training mode ({', '.join(left[:4])}): the teacher must use its "
            f"running statistics; call model.eval() before torch.export.export"
        )
    layers = sum(isinstance(m, GraphBatchNorm) for m in model.modules())
    return model, f"torch.export program exported for {shown}, {layers} BatchNorm layers hooked"

"""TorchScript teachers whose BatchNorm layers the BN-statistics loss can see.

A TorchScript model runs its layers inside compiled code that calls no Python forward hooks, so the
BN-statistics loss (``guidance.teacher_loss``) cannot read the inputs of its BatchNorm layers. A scripted
model that contains BatchNorm layers (submodules whose ``original_name`` says so) is therefore
converted to an eager ``torch.fx`` graph by PyTorch's TorchScript-to-export converter, and each of the
graph's eval-mode ``aten.batch_norm`` calls becomes a call of a real BatchNorm module holding the same
weight, bias and running statistics. The converted model is used only if it gives exactly the scripted
model's logits on a probe batch.
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn

from diffdfkd.runtime import BatchNormBase

logger = logging.getLogger(__name__)


class GraphBatchNorm(BatchNormBase):
    """A BatchNorm layer lifted out of a converted graph: eval-mode ``batch_norm`` of ``[B, C, ...]``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects [B, C, ...], got shape {tuple(input.shape)}")


def scripted_batchnorm_names(model: nn.Module) -> list[str]:
    """Names of the TorchScript submodules of ``model`` that are BatchNorm layers (by ``original_name``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.jit.ScriptModule) and "BatchNorm" in getattr(module, "original_name", "")
    ]


def _attr(graph_module: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node names (``None`` for a missing optional argument)."""
    if node is None:
        return None
    value = graph_module
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _lift_batchnorms(graph_module: fx.GraphModule) -> int:
    """Replace each eval-mode ``aten.batch_norm(x, w, b, mean, var, False, momentum, eps, cudnn)`` call
    whose statistics are graph attributes by a ``GraphBatchNorm`` module with the same tensors."""
    lifted = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.batch_norm.default:
            continue
        x, weight, bias, mean, var, training, momentum, eps = node.args[:8]
        if training or not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in (mean, var)):
            continue
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
        node.replace_all_uses_with(call)
        graph_module.graph.erase_node(node)
        lifted += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return lifted


def with_visible_batchnorm(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """``model`` itself, or, for a TorchScript model with BatchNorm layers, its eager graph in which
    every BatchNorm is a hookable module (see the module docstring).

    ``probe [B, C, H, W]``: an input of the model's size, for the conversion and the check that the
    logits are unchanged. When conversion fails or changes the logits, the scripted model is returned
    (the BN-statistics loss then names its unreachable layers and the ways out) and a warning logged.
    """
    scripted = scripted_batchnorm_names(model)
    if not isinstance(model, torch.jit.ScriptModule) or not scripted:
        return model
    # torch's one TorchScript -> graph converter; imported here because it loads torch.export (seconds),
    # which only a TorchScript teacher with BatchNorm layers needs
    from torch._export.converter import TS2EPConverter

    model = model.eval()
    try:
        exported = TS2EPConverter(model, (probe,)).convert().module()
        graph_module = fx.GraphModule(exported, exported.graph)  # a plain one: eval()/train() allowed
        lifted = _lift_batchnorms(graph_module)
        with torch.no_grad():
            same = torch.equal(graph_module(probe), model(probe))
    except Exception as error:  # the converter raises many types; the scripted model still works
        logger.warning("TorchScript teacher kept as is, its BatchNorm layers unreachable: %s", error)
        return model
    if lifted != len(scripted) or not same:
        logger.warning(
            "TorchScript teacher kept as is: its graph has %d of its %d BatchNorm layers%s",
            lifted,
            len(scripted),
            "" if same else " and changes its logits",
        )
        return model
    return graph_module.eval().requires_grad_(False)

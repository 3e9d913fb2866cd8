"""TorchScript teachers whose BatchNorm layers the BN-statistics loss can see.

A TorchScript model runs its layers inside compiled code that calls no Python forward hooks, so the
BN-statistics loss (``guidance.teacher_loss``) cannot read the inputs of its BatchNorm layers. A scripted
model that contains BatchNorm layers (submodules whose ``original_name`` says so) is therefore
converted to an ``ExportedProgram`` by PyTorch's TorchScript-to-export converter (the private
``torch._export.converter``), whose batch-norm ops become real BatchNorm modules as for a ``.pt2``
teacher (``models.exported``). The converted model is used only if it gives exactly the scripted
model's logits on a probe batch; where the converter is missing (another torch) or fails, the scripted
model is kept and a warning says why. TorchScript is deprecated in torch 2.13: prefer ``.pt2``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from diffdfkd.models.exported import hookable_module
from diffdfkd.runtime import batchnorm_modules

logger = logging.getLogger(__name__)


def scripted_batchnorm_names(model: nn.Module) -> list[str]:
    """Names of the TorchScript submodules of ``model`` that are BatchNorm layers (by ``original_name``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.jit.ScriptModule) and "BatchNorm" in getattr(module, "original_name", "")
    ]


def with_visible_batchnorm(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """``model`` itself, or, for a TorchScript model with BatchNorm layers, its eager graph in which
    every BatchNorm is a hookable module (see the module docstring).

    ``probe [B, C, H, W]``: an input of the model's size, for the conversion and the check that the
    logits are unchanged. When conversion is unavailable, fails or changes the logits, the scripted
    model is returned (the BN-statistics loss then names its unreachable layers and the ways out) and a
    warning logged.
    """
    scripted = scripted_batchnorm_names(model)
    if not isinstance(model, torch.jit.ScriptModule) or not scripted:
        return model
    model = model.eval()
    try:
        # private API, and it loads torch.export (seconds): imported only for a scripted BN teacher
        from torch._export.converter import TS2EPConverter

        graph_module, left = hookable_module(TS2EPConverter(model, (probe,)).convert())
        with torch.no_grad():
            same = torch.equal(graph_module(probe), model(probe))
    except ImportError as error:
        logger.warning(
            "TorchScript teacher kept as is, its BatchNorm layers unreachable: this torch has no "
            "TorchScript converter (%s); re-save the teacher with torch.export.save (.pt2)",
            error,
        )
        return model
    except Exception as error:  # the converter raises many types; the scripted model still works
        logger.warning("TorchScript teacher kept as is, its BatchNorm layers unreachable: %s", error)
        return model
    lifted = len(batchnorm_modules(graph_module))
    if left or lifted != len(scripted) or not same:
        logger.warning(
            "TorchScript teacher kept as is: its graph has %d of its %d BatchNorm layers%s",
            lifted,
            len(scripted),
            "" if same else " and changes its logits",
        )
        return model
    return graph_module

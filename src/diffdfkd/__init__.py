"""diffdfkd: data-free knowledge distillation with diffusion models."""

__version__ = "0.1.0"

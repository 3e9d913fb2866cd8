"""Loading the parts of a Stable-Diffusion-style latent diffusion model from a local folder.

A pipeline folder in the diffusers ``StableDiffusionPipeline`` layout (``model_index.json`` plus the
sub-folders ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``): SD 1.x / 2.x as saved by
``save_pretrained`` or downloaded once, or the digits world's shipped generator. Nothing is fetched from
a hub: loading is offline.

Supported samplers (``generator.scheduler``) are those that draw their stochastic noise through the
``generator`` argument of ``step`` (so a list of per-sample generators makes every sample's noise its
own) and whose model input is either ``z_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` (``ddpm``, ``ddim``,
``dpmpp_2m``) or ``z = x0 + sigma eps`` scaled by ``scale_model_input`` (``euler``, ``euler_ancestral``).
The UNet's own parameterisation (epsilon or v-prediction) is read from the folder's scheduler config;
the sampler converts every model output to epsilon and builds the scheduler for epsilon.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffdfkd.errors import UserError
from diffdfkd.runtime import resolve_device, resolve_dtype

SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ComponentsError(UserError, ValueError):
    """A pipeline folder, scheduler name, device or dtype that cannot be used, with the reason."""


@dataclass
class DiffusionComponents:
    """The parts of a latent text-to-image diffusion model, ready on one device.

    Parameters stay fp32 on CPU; on CUDA they are cast to ``dtype``. Model calls run under
    ``autocast()`` when ``dtype`` is not fp32. ``prediction_type`` is the UNet's own output
    ("epsilon" or "v_prediction"); ``scheduler`` is configured for epsilon.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler: Any
    prediction_type: str
    device: torch.device
    dtype: torch.dtype

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel, e.g. 8 for SD (512 px -> 64 latents)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """Image side the UNet was trained for: ``unet.sample_size * vae_scale_factor``."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def autocast(self) -> torch.autocast:
        """Mixed-precision context for model calls (a no-op for fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


def build_scheduler(path: str | Path, name: str) -> tuple[Any, str]:
    """Scheduler ``name`` built from the pipeline's scheduler config -> ``(scheduler, prediction_type)``.

    The returned scheduler expects epsilon; ``prediction_type`` is what the UNet actually predicts.
    """
    import diffusers

    if name not in SCHEDULER_CLASSES:
        raise ComponentsError(f"unknown scheduler {name!r}; supported: {', '.join(SCHEDULER_CLASSES)}")
    config_file = Path(path) / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise ComponentsError(f"pipeline folder {path} has no scheduler/scheduler_config.json")
    config = json.loads(config_file.read_text())
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ComponentsError(
            f"the pipeline's UNet predicts {prediction_type!r}; supported: epsilon, v_prediction"
        )
    class_name, extra = SCHEDULER_CLASSES[name]
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(extra, prediction_type="epsilon")
    scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_config(config), prediction_type


def _part_class(index: dict[str, Any], part: str, path: Path) -> type:
    """The class ``model_index.json`` names for ``part`` (e.g. transformers.CLIPTextModel)."""
    entry = index.get(part)
    if not isinstance(entry, list | tuple) or len(entry) != 2 or entry[1] is None:
        raise ComponentsError(f"{path / 'model_index.json'} names no class for the part {part!r}")
    library, class_name = entry
    try:
        return getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as error:
        raise ComponentsError(
            f"cannot import {library}.{class_name} for the part {part!r}: {error}"
        ) from None


def read_pipeline_index(path: str | Path) -> dict[str, Any]:
    """The ``model_index.json`` of a pipeline folder that has every part (``PARTS``), else a
    ``ComponentsError`` naming what is missing."""
    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ComponentsError(
            f"{path} is not a diffusers pipeline folder (no model_index.json); give generator.path a "
            f"local folder saved with StableDiffusionPipeline.save_pretrained"
        )
    missing = [part for part in PARTS if not (path / part).is_dir()]
    if missing:
        raise ComponentsError(f"pipeline folder {path} lacks the part(s) {', '.join(missing)}")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as error:
        raise ComponentsError(f"{index_file} is not valid JSON: {error}") from None
    for part in PARTS[:-1]:  # the scheduler is built by name (generator.scheduler)
        _part_class(index, part, path)
    return index


def check_weight_files(folder: str | Path) -> int:
    """Read the header of every ``*.safetensors`` file of a model folder (no tensor is loaded) and
    check that it covers the file exactly: a truncated or damaged file is a ``ComponentsError`` naming
    it. Returns the number of files read."""
    from safetensors import SafetensorError, safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ComponentsError(
                f"{file} is not a complete safetensors file ({error}); copy it again from its source"
            ) from None
    return len(files)


def load_tokenizer(path: str | Path, index: dict[str, Any] | None = None) -> Any:
    """The tokenizer of a pipeline folder (``index``: its ``model_index.json``, read if not given)."""
    path = Path(path)
    index = read_pipeline_index(path) if index is None else index
    try:
        return _part_class(index, "tokenizer", path).from_pretrained(
            path / "tokenizer", local_files_only=True
        )
    except (OSError, ValueError) as error:
        raise ComponentsError(f"cannot load the tokenizer from {path / 'tokenizer'}: {error}") from None


def check_prompt_lengths(tokenizer: Any, prompts: list[str], what: str = "prompt") -> None:
    """Refuse (``ComponentsError``) a prompt of more tokens than the tokenizer's window
    (``model_max_length``, start and end tokens included): the text encoder would silently drop the
    rest, and class prompts cut before the class name would all be the same prompt."""
    window = tokenizer.model_max_length
    for prompt in dict.fromkeys(prompts):
        count = len(tokenizer(prompt, truncation=False).input_ids)
        if count > window:
            raise ComponentsError(
                f"the {what} {prompt!r} is {count} tokens long (start and end tokens included), more than "
                f"the {window} the generator's tokenizer takes; shorten it to fit"
            )


def load_components(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "fp32",
    scheduler: str = "ddpm",
    gradient_checkpointing: bool = False,
) -> DiffusionComponents:
    """Load UNet, VAE, text encoder, tokenizer and scheduler from a local pipeline folder, offline.

    ``dtype``: "fp32" | "bf16" | "fp16" (or the torch dtype). ``scheduler``: a key of
    ``SCHEDULER_CLASSES``. ``gradient_checkpointing``: recompute UNet and VAE activations during the
    guidance backward pass (same gradients, less memory). Raises ``ComponentsError`` naming a missing folder or part or an unknown
    scheduler, and ``runtime.SettingError`` for an unknown device or dtype.
    """
    path = Path(path)
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    index = read_pipeline_index(path)
    sched, prediction_type = build_scheduler(path, scheduler)
    param_dtype = dtype if device.type == "cuda" else torch.float32  # CPU: fp32 weights, autocast compute
    models = {}
    for part in ("unet", "vae", "text_encoder"):
        # Loaded straight into param_dtype: a folder saved in fp16 (as SD's fp16 variants and the emoji
        # generator are) runs in fp32 on the CPU. (A cast after loading makes diffusers warn.)
        dtype_keyword = "torch_dtype" if index[part][0] == "diffusers" else "dtype"  # transformers: dtype
        try:
            model = _part_class(index, part, path).from_pretrained(
                path / part, local_files_only=True, **{dtype_keyword: param_dtype}
            )
        except (OSError, ValueError) as error:
            raise ComponentsError(f"cannot load the {part} from {path / part}: {error}") from None
        models[part] = model.to(device).eval().requires_grad_(False)
    if gradient_checkpointing:
        models["unet"].enable_gradient_checkpointing()
        models["vae"].enable_gradient_checkpointing()
    tokenizer = load_tokenizer(path, index)
    return DiffusionComponents(
        unet=models["unet"],
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=tokenizer,
        scheduler=sched,
        prediction_type=prediction_type,
        device=device,
        dtype=dtype,
    )


@torch.no_grad()
def encode_prompts(components: DiffusionComponents, prompts: list[str]) -> torch.Tensor:
    """Text embeddings ``[B, L, D]`` of ``prompts`` (padded to the tokenizer's max length, as SD does);
    a prompt longer than that is refused (``check_prompt_lengths``), never cut."""
    check_prompt_lengths(components.tokenizer, list(prompts))
    tokens = components.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=components.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = tokens.input_ids.to(components.device)
    mask = None
    if getattr(components.text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(components.device)
    with components.autocast():
        hidden = components.text_encoder(ids, attention_mask=mask)[0]
    return hidden.float()


def decode_latents(
    components: DiffusionComponents, latents: torch.Tensor, vae: torch.nn.Module | None = None
) -> torch.Tensor:
    """VAE-decode clean latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1].

    ``image = clamp(D(x0 / scaling_factor) / 2 + 1/2, 0, 1)``. The clamp is straight-through: the
    forward value is clamped, the gradient passes as if it were not, so a saturated pixel (e.g. a
    digit's black background) can still be brightened by the guidance instead of getting zero gradient.
    Differentiable when ``latents`` requires grad. ``vae``: another decoder of the same latents (the
    tiny guidance decoder, see :func:`load_guidance_decoder`); default the pipeline's own VAE.
    """
    vae = components.vae if vae is None else vae
    scaled = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        scaled = scaled + vae.config.shift_factor
    with components.autocast():
        decoded = vae.decode(scaled).sample
    images = decoded.float() / 2 + 0.5
    return images + (images.clamp(0, 1) - images).detach()


GUIDANCE_DECODER_IN_PIPELINE = "pipeline"
"""``generator.guidance_decoder`` value meaning the pipeline folder's own ``vae_tiny/`` sub-folder."""
TINY_DECODER_DIR = "vae_tiny"


def guidance_decoder_folder(pipeline_path: str | Path, value: str) -> Path | None:
    """Where ``generator.guidance_decoder=value`` points: ``None`` for "" (the full VAE decodes for the
    guidance too), ``<pipeline>/vae_tiny`` for "pipeline", else the folder ``value`` itself."""
    if not value:
        return None
    if value == GUIDANCE_DECODER_IN_PIPELINE:
        return Path(pipeline_path) / TINY_DECODER_DIR
    return Path(value)


def check_guidance_decoder(path: str | Path, latent_channels: int, vae_scale_factor: int) -> Path:
    """Refuse (``ComponentsError``) a guidance-decoder folder that is missing, holds another class than
    ``AutoencoderTiny``, or does not take ``latent_channels``-channel latents up by ``vae_scale_factor``."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ComponentsError(
            f"guidance decoder folder {path} has no config.json; give generator.guidance_decoder a folder "
            f"saved with AutoencoderTiny.save_pretrained, '{GUIDANCE_DECODER_IN_PIPELINE}' for the "
            "pipeline's vae_tiny/, or '' for the full VAE"
        )
    config = json.loads(config_file.read_text())
    if config.get("_class_name") != "AutoencoderTiny":
        raise ComponentsError(
            f"{path} holds a {config.get('_class_name')!r}; the guidance decoder must be an AutoencoderTiny"
        )
    channels = int(config.get("latent_channels", 4))
    stages = len(config.get("decoder_block_out_channels", (64, 64, 64, 64)))
    upsampling = int(config.get("upsampling_scaling_factor", 2)) ** (stages - 1)
    if channels != latent_channels or upsampling != vae_scale_factor:
        raise ComponentsError(
            f"the guidance decoder at {path} takes {channels}-channel latents and upsamples {upsampling}x; "
            f"the pipeline has {latent_channels} channels and a VAE factor of {vae_scale_factor}"
        )
    return path


def load_guidance_decoder(path: str | Path, components: DiffusionComponents) -> torch.nn.Module:
    """A small decoder for the guidance gradient only: an ``AutoencoderTiny`` (TAESD architecture) folder.

    It must decode the pipeline's UNet-space latents ``[B, C, h, w]`` (``scaling_factor`` 1, as TAESD
    does for Stable Diffusion) to images of the same size as the VAE's; see
    :func:`check_guidance_decoder`. The saved images are still decoded by the full VAE.
    """
    from diffusers import AutoencoderTiny

    path = check_guidance_decoder(path, components.latent_channels, components.vae_scale_factor)
    try:
        decoder = AutoencoderTiny.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ComponentsError(f"cannot load the guidance decoder from {path}: {error}") from None
    if components.device.type == "cuda" and components.dtype != torch.float32:
        decoder = decoder.to(dtype=components.dtype)
    return decoder.to(components.device).eval().requires_grad_(False)

"""The online student: the student CMI and Fast-Datafree train during synthesis, which the adversarial
guidance term measures disagreement against (``guidance.adv_weight > 0``).

Synthesis then runs in ROUNDS, one per batch of the dataset, in batch order. Round ``r``:

1. batch ``r`` is sampled with ``L = w_ce CE + w_bn L_bn + w_adv L_adv`` against the student as it is
   after round ``r - 1``, where ``L_adv = -KL(p_T || p_S) 1[argmax p_S = argmax p_T]`` per sample
   (``guidance.teacher_loss.adversarial``): it pushes the samples the student already agrees on
   towards disagreement. ``L_adv`` is on from round ``online.warmup_rounds``; before it the student
   has seen too few images for its disagreement to mean much (the reference enables it after 20
   rounds), so those rounds use ``w_adv = 0``;
2. the batch is written; then the student takes ``online.kd_steps`` steps of
   ``T^2 KL(softmax(t / T) || softmax(s / T))`` (``distill.losses.kd_loss``) on ``online.batch_size``
   images drawn uniformly, with replacement, from every image saved so far (round ``r``'s included),
   AS SAVED (uint8 at the dataset's size, intermediates included) with the teacher's logits on the
   saved image (the manifest's) as targets: SGD with momentum 0.9, weight decay 5e-4 and a constant
   ``online.lr``, no augmentation (the targets describe the un-augmented image).

So the student after round ``r`` is a function of the seed and the saved images of rounds ``<= r``
only: a resumed run rebuilds it by replaying step 2 on the batches already written (cheap KD steps,
no diffusion redone) and ends byte-identical to an uninterrupted run. Its initial weights come from
the seed's own stream, round ``r``'s draws from ``(seed, stream, r)``. Rounds are sequential, so
synthesis with ``L_adv`` runs in one process (``check_online`` refuses shards).

The student reported by a run is NOT this one: the final student is trained afterwards on the fixed
synthetic set (``distill.trainer.fit``), as for every source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.distill.losses import kd_loss
from diffdfkd.models import create_model
from diffdfkd.runtime import stream_seed

# Random streams of the student's initial weights and of each round's draws (0-4: the samples', the
# groups', the real source's, Fast's generator and warm-up).
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4


ADVERSARIAL_SOURCES = ("diffdfkd", "fast", "cmi")  # the sources whose loss takes L_adv against the student


def check_online(config: ExperimentConfig, num_shards: int = 1) -> None:
    """Refuse, before anything runs, what ``guidance.adv_weight > 0`` cannot do: a source without the
    term, no teacher guidance to carry it (DiffDFKD in mode ``none``), several shards."""
    weight = config.guidance.adv_weight
    if weight == 0:
        return
    if config.synth.source not in ADVERSARIAL_SOURCES:
        raise ConfigError(
            f"guidance.adv_weight={weight} is a term of DiffDFKD's teacher guidance and of Fast's and CMI's "
            f"generator loss; synth.source={config.synth.source} does not use it: set guidance.adv_weight=0"
        )
    if config.synth.source == "diffdfkd" and config.guidance.mode == "none":
        raise ConfigError(
            f"guidance.adv_weight={weight} with guidance.mode=none: there is no teacher guidance to carry "
            f"the adversarial term; choose a guided mode (full, detach_unet, one_pass) or set "
            f"guidance.adv_weight=0"
        )
    if num_shards > 1:
        raise ConfigError(
            f"guidance.adv_weight={weight} makes every batch depend on the online student trained on all "
            f"earlier batches, so its rounds run in order in ONE process; {num_shards} shards cannot give "
            f"the same dataset. Run without --shard/--num-shards (and without torchrun), or set "
            f"guidance.adv_weight=0"
        )


def online_arch(config: ExperimentConfig) -> str:
    """The online student's zoo model: ``online.student``, else ``distill.student``."""
    return config.online.student or config.distill.student


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images [B, C, H, W]`` at ``size x size`` (bicubic, antialiased), as the dataset saves them."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)


class OnlineStudent:
    """The student trained between synthesis rounds (module docstring).

    ``student(images [B, 3, H, W] in [0, 1], any size) -> logits [B, K]`` is the guide's student:
    the images resized to the dataset's ``size`` and the model in eval mode, differentiable with
    respect to the images; ``active`` says whether ``L_adv`` is on for the round being made (the
    ``synthetic.Adversary`` the sources see). ``learn(pixels, teacher_logits)`` is one round's KD
    (step 2); ``diffdfkd.synth.rounds`` calls it after each batch.
    """

    def __init__(self, config: ExperimentConfig, num_classes: int, size: int, device: torch.device) -> None:
        self.options = config.online
        self.seed = config.seed
        self.size = size
        self.device = device
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
            torch.manual_seed(stream_seed("online_student", config.seed))
            model = create_model(online_arch(config), num_classes=num_classes, in_channels=3)
        self.model = model.to(device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.options.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
        self.pixels = torch.zeros(0, 3, size, size, dtype=torch.uint8)  # every image saved so far
        self.teacher_logits = torch.zeros(0, num_classes)
        self.rounds = 0

    @property
    def active(self) -> bool:
        """Whether ``L_adv`` is on for the round being made: after ``online.warmup_rounds`` rounds of
        learning (the round being made is the number of rounds learnt so far)."""
        return self.rounds >= self.options.warmup_rounds

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(resize(images, self.size))

    def learn(self, pixels: torch.Tensor, teacher_logits: torch.Tensor) -> dict[str, float]:
        """One round: add a batch's saved images ``pixels [N, 3, S, S]`` (uint8) and the teacher's
        logits on them ``[N, K]`` to the pool, then ``online.kd_steps`` KD steps on draws from it.

        Returns ``agree``: the share of the new images on which the student agreed with the teacher
        BEFORE learning from them (what ``L_adv`` acts on), and ``kd``: the last step's loss.
        """
        if pixels.dtype != torch.uint8 or tuple(pixels.shape[1:]) != (3, self.size, self.size):
            raise ValueError(
                f"the online student learns from saved uint8 images [N, 3, {self.size}, {self.size}], got "
                f"{pixels.dtype} {tuple(pixels.shape)}"
            )
        o = self.options
        with torch.no_grad():
            predicted = self(pixels.to(self.device).float() / 255).argmax(dim=1).cpu()
        agree = (predicted == teacher_logits.argmax(dim=1)).float().mean().item()
        self.pixels = torch.cat([self.pixels, pixels])
        self.teacher_logits = torch.cat([self.teacher_logits, teacher_logits.float()])
        draws = torch.Generator().manual_seed(stream_seed("online_draws", self.seed, self.rounds))
        self.model.train()
        for _ in range(o.kd_steps):
            pick = torch.randint(len(self.pixels), (o.batch_size,), generator=draws)
            images = self.pixels[pick].to(self.device).float() / 255
            loss = kd_loss(self.model(images), self.teacher_logits[pick].to(self.device), o.temperature)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.model.eval()
        self.rounds += 1
        return {"agree": agree, "kd": loss.item()}

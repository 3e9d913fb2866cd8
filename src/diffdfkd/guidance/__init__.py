"""Teacher guidance: the losses on the decoded predicted clean image and the gradient on z_t."""

from diffdfkd.guidance.guide import GuidanceError, Guide, GuideOutput, TeacherGuide
from diffdfkd.guidance.losses import BNStatsLoss, adversarial_loss, cross_entropy_sum

__all__ = [
    "BNStatsLoss",
    "Guide",
    "GuideOutput",
    "GuidanceError",
    "TeacherGuide",
    "adversarial_loss",
    "cross_entropy_sum",
]

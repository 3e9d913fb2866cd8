"""Teacher guidance: the teacher's loss terms and the gradient of their sum on z_t."""

from diffdfkd.guidance.guide import GuidanceError, Guide, GuideOutput, TeacherGuide
from diffdfkd.guidance.teacher_loss import BNStatistics, NoBatchNormError, Units

__all__ = [
    "BNStatistics",
    "Guide",
    "GuideOutput",
    "GuidanceError",
    "NoBatchNormError",
    "TeacherGuide",
    "Units",
]

"""Models: the zoo of CIFAR-style (32x32) classifiers, and the frozen ``Teacher`` wrapper and its loading."""

from diffdfkd.models.teacher import Teacher, TeacherSpec, build_teacher, export_weights, load_teacher
from diffdfkd.models.zoo import MODELS, create_model, list_models

__all__ = [
    "MODELS",
    "Teacher",
    "TeacherSpec",
    "build_teacher",
    "create_model",
    "export_weights",
    "list_models",
    "load_teacher",
]

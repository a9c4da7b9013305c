"""The trainer and the objects it is composed of."""

from .computer import TermComputer
from .convert import convert_checkpoint
from .student import PROJECTOR_NAME, DistillationStudent
from .teacher import TeacherSetup
from .trainer import DistillationTrainer

__all__ = [
    "PROJECTOR_NAME",
    "DistillationStudent",
    "DistillationTrainer",
    "TeacherSetup",
    "TermComputer",
    "convert_checkpoint",
]

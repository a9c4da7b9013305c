"""The trainer and the objects it is composed of."""

from .checkpoints import last_complete_checkpoint
from .computer import TermComputer
from .convert import convert_checkpoint
from .guards import EmptyLabelsError, NonFiniteError
from .student import PROJECTOR_NAME, DistillationStudent
from .teacher import TeacherSetup
from .trainer import DistillationTrainer

__all__ = [
    "PROJECTOR_NAME",
    "DistillationStudent",
    "DistillationTrainer",
    "EmptyLabelsError",
    "NonFiniteError",
    "TeacherSetup",
    "TermComputer",
    "convert_checkpoint",
    "last_complete_checkpoint",
]

"""The training loop, checkpoints and run outputs."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .ensemble import Ensemble, LoopedEnsemble, VectorisedEnsemble
from .recorder import TrainingDiverged
from .train import TrainResult, train

__all__ = [
    "CheckpointError",
    "Ensemble",
    "LoopedEnsemble",
    "TrainResult",
    "TrainingDiverged",
    "VectorisedEnsemble",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "train",
]

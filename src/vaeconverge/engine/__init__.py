"""The training loop, checkpoints and run outputs."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .ensemble import Ensemble, LoopedEnsemble, VectorisedEnsemble
from .loop import TrainingDiverged
from .outputs import write_run
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
    "write_run",
]

"""The training loop, checkpoints and run outputs."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .ensemble import Ensemble, LoopedEnsemble, VectorisedEnsemble
from .loop import TrainingDiverged
from .outputs import write_run
from .plan import flush_denormals
from .train import TrainResult, train

__all__ = [
    "CheckpointError",
    "Ensemble",
    "LoopedEnsemble",
    "TrainResult",
    "TrainingDiverged",
    "VectorisedEnsemble",
    "flush_denormals",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "train",
    "write_run",
]

"""The single-site trainer the sites run: DP-SGD with Poisson sampling, evaluation, a non-private baseline."""

from fedjax_room.local.trainer import (
    OPTIMIZERS,
    EvalResult,
    LocalTrainer,
    TrainStats,
    clipped_sum,
    evaluate,
    train_central,
)

__all__ = ["OPTIMIZERS", "EvalResult", "LocalTrainer", "TrainStats", "clipped_sum", "evaluate", "train_central"]

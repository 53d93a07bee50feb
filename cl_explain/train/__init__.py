"""Train and evaluate the embedded models on the synthetic scenes (the package's offline default).

Objectives (`losses.OBJECTIVE_LOSSES`): SimCLR (NT-Xent), Barlow Twins, SimSiam, and a supervised
classifier of the same architecture. `config` holds what determines a run, `views` the seeded
training views, `loop` the training itself, `quality` the quality numbers on the test split (kNN,
linear probe, view pass rates), `manifest` the build of every checkpoint and of the manifest.
Training is seeded and deterministic on one platform (fixed thread count; the augmentation of
sample i in epoch e comes from its own seeded generator).

Rebuild everything (`make models`):  python -m cl_explain.train --all
"""

from .config import DEFAULT_CONFIGS, OPTIMIZERS, TrainConfig
from .loop import train
from .losses import OBJECTIVE_LOSSES, barlow_twins_loss, nt_xent, simsiam_loss
from .manifest import build_all, random_init_model, reevaluate_all
from .quality import (
    CHECK_SCENES,
    DIAGNOSTIC_SCENES,
    PROBE_TOLERANCE,
    QUALITY_TOLERANCE,
    EvalData,
    embed_scenes,
    knn_accuracy,
    linear_probe_accuracy,
    measure_quality,
    pointing_baselines,
    recompute_quality,
    view_pass_rate,
)
from .views import scene_statistics, view_bank

__all__ = [
    "TrainConfig",
    "DEFAULT_CONFIGS",
    "OPTIMIZERS",
    "OBJECTIVE_LOSSES",
    "nt_xent",
    "barlow_twins_loss",
    "simsiam_loss",
    "train",
    "build_all",
    "reevaluate_all",
    "random_init_model",
    "measure_quality",
    "recompute_quality",
    "EvalData",
    "knn_accuracy",
    "linear_probe_accuracy",
    "view_pass_rate",
    "CHECK_SCENES",
    "PROBE_TOLERANCE",
    "QUALITY_TOLERANCE",
    "scene_statistics",
    "view_bank",
    "embed_scenes",
    "pointing_baselines",
    "DIAGNOSTIC_SCENES",
]

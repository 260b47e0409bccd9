"""Stage 1: train a CAM network (one file per method on a common base) and infer CAMs with TTA."""

from wsss.cam import eps, oc_cse, pnoc, puzzle, smvwe, vanilla  # noqa: F401  (register the methods)
from wsss.cam.base import (
    CAM_METHODS,
    CamTrainConfig,
    CamTrainer,
    build_trainer,
    register_cam_method,
    train_cam,
)
from wsss.cam.infer import infer_cams, tta_cams
from wsss.models.cam_net import load_cam_model

__all__ = [
    "CAM_METHODS",
    "CamTrainConfig",
    "CamTrainer",
    "build_trainer",
    "infer_cams",
    "load_cam_model",
    "register_cam_method",
    "train_cam",
    "tta_cams",
]

"""Networks: timm backbones (output stride 16) and the CAM classifier."""

from wsss.models.backbone import build_backbone, load_backbone_weights, read_state_dict
from wsss.models.cam_net import CamNet, load_cam_model, save_cam_model

__all__ = [
    "CamNet",
    "build_backbone",
    "load_backbone_weights",
    "load_cam_model",
    "read_state_dict",
    "save_cam_model",
]

"""Stage 4: training and running the segmentation network on the pseudo labels
(``train``: SegTrainer on the CAM training base; ``methods``: the loss variants;
``predict``: the network's own fused multi-scale logits or scale + flip inference,
optional CRF).

``wsss.seg.losses`` holds the training losses: plain CE, seed 004's size-weighted CE
(connected components of the pseudo label, on the label tensor itself) and the
size-balanced schedule (plain CE with a running Fisher diagonal, then size-weighted
CE plus an EWC penalty towards the task-A weights).
"""

from __future__ import annotations

from wsss.seg import methods  # noqa: F401  (registers size-weighted, size-balanced)
from wsss.seg.predict import predict_seg
from wsss.seg.train import SEG_METHODS, SegTrainConfig, SegTrainer, register_seg_method, train_seg

__all__ = ["SEG_METHODS", "SegTrainConfig", "SegTrainer", "predict_seg", "register_seg_method", "train_seg"]

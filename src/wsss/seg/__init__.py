"""Stage 4: training and running the segmentation network on the pseudo labels.

``wsss.seg.losses`` holds the training losses: plain CE, seed 004's size-weighted CE
(connected components of the pseudo label, on the label tensor itself) and the
size-balanced schedule (plain CE with a running Fisher diagonal, then size-weighted
CE plus an EWC penalty towards the task-A weights).
"""

from __future__ import annotations

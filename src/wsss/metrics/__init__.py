"""Streaming evaluation metrics: confusion-matrix scores (mIoU, precision, recall, FPR, FNR),
instance-aware mIoU with size buckets, and seed 001's class-group analysis.

Each metric has the same two-call shape — ``process`` per image, ``merge`` of
worker states, ``compute`` once at the end — so evaluation can run in parallel
or sharded and still give the single-pass numbers.
"""

from __future__ import annotations

from wsss.metrics.confusion import ConfusionMetric, confusion_scores
from wsss.metrics.evaluate import evaluate_dataset, evaluate_dirs, evaluate_items, format_table
from wsss.metrics.groups import VOC_GROUPS, ClassGroupStats, group_table, pearson, tertile_groups
from wsss.metrics.ia_miou import (
    DEFAULT_BOUNDS,
    InstanceAwareMetric,
    ia_scores,
    image_instance_ious,
    instances_from_components,
    instances_from_map,
)
from wsss.metrics.ia_miou import VARIANTS as IA_VARIANTS

__all__ = [
    "DEFAULT_BOUNDS",
    "IA_VARIANTS",
    "VOC_GROUPS",
    "ClassGroupStats",
    "ConfusionMetric",
    "InstanceAwareMetric",
    "confusion_scores",
    "evaluate_dataset",
    "evaluate_dirs",
    "evaluate_items",
    "format_table",
    "group_table",
    "ia_scores",
    "image_instance_ious",
    "instances_from_components",
    "instances_from_map",
    "pearson",
    "tertile_groups",
]

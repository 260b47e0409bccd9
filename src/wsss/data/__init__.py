"""Datasets: one file per kind, all behind :class:`wsss.data.base.Dataset`."""

from wsss.data import coco, folder, voc  # noqa: F401  (register the dataset kinds)
from wsss.data.base import DATASETS, Dataset, build_dataset, register_dataset

__all__ = ["DATASETS", "Dataset", "build_dataset", "register_dataset"]

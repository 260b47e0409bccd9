"""Datasets: one file per kind, all behind :class:`wsss.data.base.Dataset`.

Every module in this package is imported here, so a new dataset is one file
with a class decorated by ``@register_dataset("name")``.
"""

import importlib
import pkgutil

from wsss.data.base import DATASETS, Dataset, build_dataset, register_dataset

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DATASETS", "Dataset", "build_dataset", "register_dataset"]

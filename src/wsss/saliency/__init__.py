"""Stage 2: saliency sources (imported detector maps, training-free baselines, C²AM, C²AM-H)
behind one interface, and saliency-quality metrics."""

from wsss.saliency import c2am, folder, opencv  # noqa: F401  (register the sources)
from wsss.saliency.base import (
    SALIENCY_SOURCES,
    SaliencySource,
    background_cue,
    build_saliency_source,
    make_saliency,
    min_max,
    register_saliency_source,
)

__all__ = [
    "SALIENCY_SOURCES",
    "SaliencySource",
    "background_cue",
    "build_saliency_source",
    "make_saliency",
    "min_max",
    "register_saliency_source",
]

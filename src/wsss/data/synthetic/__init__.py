"""The embedded benchmark (``wsss synth``): synthetic scenes in the PASCAL VOC layout.

Real WSSS benchmarks cannot be downloaded here, and a benchmark where every method
scores the same teaches nothing. So the scenes are built to make the problems that
WSSS methods exist for actually appear, each behind a knob of :class:`SynthConfig`:

* recognisable objects: each class's bodies carry its own natural texture (photographs
  bundled with scikit-image / scikit-learn) and palette, so ImageNet features respond;
* partial activation: classes share a few body shapes and differ by a small part
  (15-25 % of the object), whose colour is class-specific only part of the time;
* co-occurring context: half the classes usually stand on their own "stuff"
  (water, rails, ...), which is background in the ground truth;
* salient distractors (bright part-less bodies) and cluttered backgrounds with the
  structure of scene photographs;
* object sizes calibrated on VOC's statistics (``wsss stats``): areas log-uniform from
  0.5 % to 70 % of the image (the ``cartoon`` and ``tiny`` presets: ~0.25-38 %, which
  populates every IA-mIoU size bucket);
* saliency maps from simulated detectors of graded quality (``oracle``, ``good``,
  ``poor``), so saliency quality drives pseudo-label quality.

Every image draws its randomness from ``(seed, split, index)`` alone, so the files
do not depend on generation order, sharding or the size of the other split.

The package has one module per concern: :mod:`~wsss.data.synthetic.config` (the knobs and
presets), :mod:`~wsss.data.synthetic.shapes` (classes and shapes),
:mod:`~wsss.data.synthetic.layout` (scene layout), :mod:`~wsss.data.synthetic.render`
(rendering), :mod:`~wsss.data.synthetic.textures` (natural textures),
:mod:`~wsss.data.synthetic.saliency` (saliency simulation),
:mod:`~wsss.data.synthetic.splits` (splits and statistics) and
:mod:`~wsss.data.synthetic.generator` (the stage that writes the files).
"""

from wsss.data.balance import select_balanced_subset
from wsss.data.synthetic.config import PRESETS, SynthConfig
from wsss.data.synthetic.generator import FORMAT_VERSION, generate
from wsss.data.synthetic.saliency import SALIENCY_SOURCES
from wsss.data.synthetic.shapes import (
    BODY_FAMILIES,
    BODY_PALETTE,
    BODY_TEXTURES,
    PART_NAMES,
    STUFF_NAMES,
    load_shape_bank,
    shape_bank_files,
)

# internals the generator's tests exercise directly
from wsss.data.synthetic.shapes import _make_classes as _make_classes
from wsss.data.synthetic.shapes import _procedural_template as _procedural_template
from wsss.data.synthetic.splits import (
    SIZE_BUCKETS,
    VOC_IMAGE_AREA,
    VOC_SIZE_BOUNDS,
    scaled_size_bounds,
    size_bucket,
)

__all__ = [
    "BODY_FAMILIES",
    "BODY_PALETTE",
    "BODY_TEXTURES",
    "FORMAT_VERSION",
    "PART_NAMES",
    "PRESETS",
    "SALIENCY_SOURCES",
    "SIZE_BUCKETS",
    "STUFF_NAMES",
    "VOC_IMAGE_AREA",
    "VOC_SIZE_BOUNDS",
    "SynthConfig",
    "generate",
    "load_shape_bank",
    "shape_bank_files",
    "scaled_size_bounds",
    "select_balanced_subset",
    "size_bucket",
]

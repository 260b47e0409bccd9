"""wsss: weakly-supervised semantic segmentation from image-level labels.

Stages are top-level modules: ``wsss.cam`` (stage 1), ``wsss.saliency`` (2),
``wsss.pseudo`` (3), ``wsss.seg`` (4), ``wsss.metrics`` (evaluation) and
``wsss.bench``; they exchange files in the formats of ``wsss.io``.
"""

__version__ = "0.1.0"

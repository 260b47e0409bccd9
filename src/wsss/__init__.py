"""wsss: weakly-supervised semantic segmentation from image-level labels.

Stages are top-level modules: ``wsss.cam`` (stage 1), ``wsss.saliency`` (2),
``wsss.pseudo`` (3), ``wsss.seg`` (4), ``wsss.metrics`` (evaluation) and
``wsss.bench``; they exchange files in the formats of ``wsss.io``.
"""

__version__ = "0.1.0"


def _sequential_opencv() -> None:
    """Keep OpenCV from starting its thread pool: a pool in a process that later forks
    (DataLoader workers, multiprocessing) deadlocks the children at their first OpenCV call.
    Our images are small and the parallelism is across processes, so nothing is lost."""
    try:
        import cv2
    except ImportError:  # cv2 is a dependency; a broken install fails where it is used
        return
    cv2.setNumThreads(0)


_sequential_opencv()

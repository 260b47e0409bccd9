"""``wsss report``: one self-contained HTML page (tables, figures, a gallery of pseudo labels)
from a ``wsss run`` folder or a bed folder of runs."""

from wsss.report.gallery import image_miou, select_gallery
from wsss.report.html import build_report, esc

__all__ = ["build_report", "esc", "image_miou", "select_gallery"]

"""Natural textures from photographs that ship inside installed packages (scikit-image's and
scikit-learn's sample images), so nothing is downloaded.

Why: ImageNet features respond to natural texture (fur, gravel, bark, fabric), not to flat
cartoon colours. Each class owns one texture source at its own zoom, so — as with VOC's
cats and cars — any patch of an object's body says which class it is, while the small
part keeps its own, stronger cue. Scene photographs (disjoint from the class sources)
give backgrounds natural structure.
"""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np

# Sources of object-body textures, one per class (reused with another zoom, stretch and
# orientation beyond 16 classes); all are bundled with scikit-image / scikit-learn.
CLASS_TEXTURE_SOURCES = (
    "gravel", "brick", "grass", "coins", "moon", "cell", "chelsea", "coffee",
    "hubble_deep_field", "immunohistochemistry", "retina", "text", "page", "flower",
    "microaneurysms", "colorwheel",
)  # fmt: skip
# Sources of background structure: scenes, never an object texture.
SCENE_TEXTURE_SOURCES = ("china", "camera", "astronaut", "rocket", "motorcycle_left")


def _load_source(name: str) -> np.ndarray:
    """The named sample image as float32 grey levels 0..1 (read from the installed package)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    elif name == "motorcycle_left":
        import skimage.data

        img = skimage.data.stereo_motorcycle()[0]
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return img.astype(np.float32) / (255.0 if img.max() > 1 else 1.0)


@cache
def texture_source(name: str, high_pass: bool = True) -> np.ndarray:
    """A source's grey levels, zero mean and unit spread; ``high_pass`` removes the layout
    (a blur of ~6 % of the picture) so that only texture is left."""
    lum = _load_source(name)
    if high_pass:
        sigma = 0.06 * max(lum.shape)
        lum = lum - cv2.GaussianBlur(lum, (0, 0), sigma)
    lum = np.clip((lum - lum.mean()) / (lum.std() + 1e-6), -3.0, 3.0)  # no rare extremes
    lum = ((lum - lum.mean()) / (lum.std() + 1e-6)).astype(np.float32)
    lum.setflags(write=False)
    return lum


def sample_texture(
    rng: np.random.Generator, source: np.ndarray, h: int, w: int, zoom: float, stretch: float = 1.0
) -> np.ndarray:
    """An h×w patch of ``source`` seen at ``zoom`` source pixels per image pixel (×``stretch``
    along x), from a random place, turned by a random multiple of 90° and maybe mirrored."""
    k = int(rng.integers(4))
    src = np.rot90(source, k) if k else source
    if rng.random() < 0.5:
        src = src[:, ::-1]
    zy, zx = zoom, zoom * stretch
    ch, cw = max(2, math.ceil(h * zy)), max(2, math.ceil(w * zx))
    sh, sw = src.shape
    if ch > sh or cw > sw:  # a larger patch than the source: tile it mirrored
        reps = (math.ceil(ch / sh) + 1, math.ceil(cw / sw) + 1)
        src = np.pad(src, ((0, (reps[0] - 1) * sh), (0, (reps[1] - 1) * sw)), mode="symmetric")
        sh, sw = src.shape
    y = int(rng.integers(0, sh - ch + 1))
    x = int(rng.integers(0, sw - cw + 1))
    crop = np.ascontiguousarray(src[y : y + ch, x : x + cw])
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)

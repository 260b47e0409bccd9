"""Random walk on the learnt affinities: spread each class's CAM over its whole object
(docs/methods.md §3, IRN's ``propagate_to_edge``).

On the 1/4 grid of the edge map: ``A_ij = a_ij^β`` for cells within ``radius`` (a_ij = 1 −
max edge on the path, :func:`wsss.models.affinity.path_affinity`; each cell has affinity 1
with itself), ``T = A / column sums`` (IRN's ``D⁻¹A`` taken column-wise, so every column of
T is a probability distribution and a walk step makes each cell a weighted mean of its
neighbours), and ``refined = (CAM · (1 − edge)) @ T^(2^num_squarings)``. Weighting by
``1 − edge`` stops boundary cells from seeding their neighbours.

Two ways to the same numbers (they agree to float rounding; a test checks it):

* ``dense``: T as an N×N matrix squared ``num_squarings`` times, as IRN does. Memory is
  ~3·N²·4 bytes for N = h·w grid cells: a 128×128 image (N = 1 024) needs 12 MB, a VOC
  image of 500×375 (N = 11 750) ~1.7 GB — fine on a GPU, slow on a CPU.
* ``sparse`` (default): ``x ← x·T`` repeated 2^num_squarings times with T sparse
  (2·|offsets| + 1 = 69 non-zeros per column at radius 5): memory linear in N and far fewer
  operations — on 2 CPU cores 0.16 s for N = 1 024 (dense: 0.4 s), 0.3 s for N = 4 096
  (dense: 12 s), 0.4 s for a VOC-sized N = 11 750.

Output (:func:`refine_cams`): the refined maps are upsampled ×4 (bilinear) to the image and
divided by their overall maximum (IRN/P-NOC: classes keep their relative strength; the top
class peaks at 1), written as CAM ``.npz`` with the same keys, so ``wsss pseudo`` and
``wsss sweep`` read them. IRN's final labelling, ``argmax([0.25, refined])``, is exactly
``wsss pseudo --tau 0.25`` on these files (ties go to background in both). With
``normalize="per_class"`` each map is divided by its own maximum instead.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import (
    WsssError,
    image_size,
    parse_shard,
    save_cam,
    shard_list,
)
from wsss.models.affinity import (
    EDGE_STRIDE,
    AffinityNet,
    half_offsets,
    load_affinity_model,
    path_affinity,
)
from wsss.models.cam_net import model_weights_path
from wsss.pseudo.threshold import load_checked_cam
from wsss.stage import dataset_settings, stage_run

__all__ = [
    "affinity_matrix",
    "cam_to_grid",
    "edge_map",
    "random_walk",
    "refine_cam",
    "refine_cams",
    "transition_matrix",
]

MODES = ("sparse", "dense")
NORMALIZE = ("global", "per_class")
SUGGESTED_TAU = 0.25  # IRN's sem_seg_bg_thres: the constant background score of the argmax


def _check_edge(edge: torch.Tensor) -> torch.Tensor:
    if edge.ndim != 2:
        raise WsssError(f"random walk: the edge map must be h×w, got shape {tuple(edge.shape)}")
    edge = edge.float()
    if not bool(torch.isfinite(edge).all()) or float(edge.min()) < 0 or float(edge.max()) > 1:
        raise WsssError("random walk: the edge map must be finite and in [0, 1]")
    return edge


def affinity_matrix(
    edge: torch.Tensor, radius: int = 5, beta: float = 10.0, sparse: bool = False
) -> torch.Tensor:
    """``A^β`` (N×N, N = h·w, row-major cells) from an edge map h×w in [0, 1]: entries for
    every pair of cells within ``radius`` (both directions, as a_ij = a_ji) and 1 on the
    diagonal. ``sparse`` returns a coalesced sparse COO tensor."""
    edge = _check_edge(edge)
    height, width = edge.shape
    reach = radius - 1
    # edge 1 beyond the map: paths that leave it get affinity 0, and every cell is a source
    padded = F.pad(edge[None, None], (reach, reach, 0, reach), value=1.0)[0, 0]
    aff = path_affinity(padded, radius).clamp(0.0, 1.0)  # O×h×w
    offsets = torch.tensor(half_offsets(radius), device=edge.device)
    ys = torch.arange(height, device=edge.device).view(1, -1, 1)
    xs = torch.arange(width, device=edge.device).view(1, 1, -1)
    dst_y, dst_x, src = torch.broadcast_tensors(
        ys + offsets[:, 0].view(-1, 1, 1), xs + offsets[:, 1].view(-1, 1, 1), ys * width + xs
    )
    inside = (dst_y < height) & (dst_x >= 0) & (dst_x < width)
    src = src[inside]
    dst = (dst_y * width + dst_x)[inside]
    values = aff[inside] ** beta
    cells = torch.arange(height * width, device=edge.device)
    rows = torch.cat([src, dst, cells])
    cols = torch.cat([dst, src, cells])
    values = torch.cat([values, values, torch.ones(cells.numel(), device=edge.device)])
    n = height * width
    if sparse:
        return torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, (n, n), check_invariants=False
        ).coalesce()
    dense = torch.zeros(n, n, device=edge.device)
    dense[rows, cols] = values
    return dense


def transition_matrix(affinity: torch.Tensor) -> torch.Tensor:
    """``T = A / column sums`` (dense or sparse COO in, same layout out)."""
    if affinity.is_sparse:
        affinity = affinity.coalesce()
        rows, cols = affinity.indices()
        values = affinity.values()
        col_sums = torch.zeros(affinity.shape[1], device=values.device).index_add_(0, cols, values)
        return torch.sparse_coo_tensor(
            affinity.indices(), values / col_sums[cols], affinity.shape, check_invariants=False
        ).coalesce()
    return affinity / affinity.sum(dim=0, keepdim=True)


def random_walk(
    cams: torch.Tensor,
    edge: torch.Tensor,
    beta: float = 10.0,
    num_squarings: int = 8,
    radius: int = 5,
    mode: str = "sparse",
) -> torch.Tensor:
    """``(cams · (1 − edge)) @ T^(2^num_squarings)`` on the grid: cams K×h×w, edge h×w
    in [0, 1] → K×h×w (see the module doc for ``mode``)."""
    if mode not in MODES:
        raise WsssError(f"random walk mode must be one of {MODES}, got {mode!r}")
    if num_squarings < 0 or beta <= 0:
        raise WsssError(f"random walk: need num_squarings >= 0 and beta > 0, got {num_squarings}, {beta}")
    edge = _check_edge(edge)
    if cams.ndim != 3 or cams.shape[1:] != edge.shape:
        raise WsssError(
            f"random walk: cams {tuple(cams.shape)} must be K×h×w on the edge grid {tuple(edge.shape)}"
        )
    num_maps, height, width = cams.shape
    n = height * width
    x = (cams.float() * (1.0 - edge)).reshape(num_maps, n)
    if num_maps == 0:
        return x.reshape(num_maps, height, width)
    if mode == "dense":
        trans = transition_matrix(affinity_matrix(edge, radius, beta))
        for _ in range(num_squarings):
            trans = trans @ trans
        out = x @ trans
    else:
        # x·T = (Tᵀ·xᵀ)ᵀ: one sparse product per walk step
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is not
            warnings.simplefilter("ignore", UserWarning)
            trans_t = transition_matrix(affinity_matrix(edge, radius, beta, sparse=True)).t().to_sparse_csr()
        y = x.T.contiguous()
        for _ in range(2**num_squarings):
            y = trans_t @ y
        out = y.T
    return out.reshape(num_maps, height, width)


# --------------------------------------------------------------------------- one image
def cam_to_grid(cam: torch.Tensor) -> torch.Tensor:
    """K×H×W → K×⌈H/4⌉×⌈W/4⌉: the mean over each 4×4 cell (the border replicated to fill
    the last cells), aligned with the edge map's grid."""
    height, width = cam.shape[-2:]
    if cam.shape[0] == 0:
        return cam.new_zeros((0, -(-height // EDGE_STRIDE), -(-width // EDGE_STRIDE)), dtype=torch.float32)
    x = F.pad(cam[None].float(), (0, (-width) % EDGE_STRIDE, 0, (-height) % EDGE_STRIDE), mode="replicate")
    return F.avg_pool2d(x, EDGE_STRIDE)[0]


@torch.inference_mode()
def edge_map(model: AffinityNet, image: np.ndarray, flip: bool = True) -> torch.Tensor:
    """Boundary map ⌈H/4⌉×⌈W/4⌉ in [0, 1] of a uint8 RGB image; with ``flip`` the logits of
    the image and its mirror are averaged (IRN). The image is padded to whole 4×4 cells
    first, so that the mirrored grid falls on the same cells."""
    dev = next(model.parameters()).device
    meta = getattr(model, "meta_info", {})
    mean = torch.tensor(meta.get("mean", (0.485, 0.456, 0.406)), device=dev).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(meta.get("std", (0.229, 0.224, 0.225)), device=dev).view(1, 3, 1, 1) * 255.0
    x = (torch.from_numpy(np.array(image, copy=True)).to(dev).permute(2, 0, 1)[None].float() - mean) / std
    height, width = image.shape[:2]
    x = F.pad(x, (0, (-width) % EDGE_STRIDE, 0, (-height) % EDGE_STRIDE))
    if flip:
        logits = model(torch.cat([x, x.flip(-1)])).float()
        logits = (logits[0] + logits[1].flip(-1)) / 2
    else:
        logits = model(x).float()[0]
    return torch.sigmoid(logits[0])


@torch.inference_mode()
def refine_cam(
    model: AffinityNet,
    image: np.ndarray,
    cam: np.ndarray,
    beta: float = 10.0,
    num_squarings: int = 8,
    radius: int = 5,
    flip: bool = True,
    normalize: str = "global",
    mode: str = "sparse",
) -> np.ndarray:
    """One image: CAM (K×H×W in [0, 1]) → refined CAM (float32 K×H×W in [0, 1])."""
    if normalize not in NORMALIZE:
        raise WsssError(f"random walk normalize must be one of {NORMALIZE}, got {normalize!r}")
    height, width = image.shape[:2]
    edge = edge_map(model, image, flip)
    dev = edge.device
    grid_cam = cam_to_grid(torch.from_numpy(np.asarray(cam, dtype=np.float32)).to(dev))
    rw = random_walk(grid_cam, edge, beta, num_squarings, radius, mode)
    if rw.shape[0] == 0:
        return np.zeros((0, height, width), np.float32)
    up = F.interpolate(rw[None], scale_factor=EDGE_STRIDE, mode="bilinear", align_corners=False)
    up = up[0, :, :height, :width].clamp_min(0.0)
    if normalize == "global":
        peak = up.max()
        up = up / peak if float(peak) > 0 else up
    else:
        peak = up.amax(dim=(1, 2), keepdim=True)
        up = torch.where(peak > 0, up / peak.clamp_min(1e-12), up)
    return up.cpu().numpy()


# --------------------------------------------------------------------------- the stage
def refine_cams(
    dataset: Dataset,
    cam_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    beta: float = 10.0,
    num_squarings: int = 8,
    radius: int = 5,
    flip: bool = True,
    normalize: str = "global",
    mode: str = "sparse",
    device: str | torch.device | None = None,
    ids: Sequence[str] | None = None,
    shard: str | tuple[int, int] | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write random-walk refined CAMs ``out_dir/<id>.npz`` (same keys as the input CAMs);
    resumes, pins its settings (model sha256 included) and records ``run.json`` (per shard).
    Label them with ``wsss pseudo --tau 0.25`` (IRN) or sweep τ."""
    if mode not in MODES:
        raise WsssError(f"random walk mode must be one of {MODES}, got {mode!r}")
    if normalize not in NORMALIZE:
        raise WsssError(f"random walk normalize must be one of {NORMALIZE}, got {normalize!r}")
    if num_squarings < 0 or beta <= 0 or radius < 2:
        raise WsssError(
            f"random walk: need beta > 0, num_squarings >= 0, radius >= 2; got {beta}, {num_squarings}, {radius}"
        )
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    if not cam_dir.is_dir():
        raise WsssError(f"{cam_dir}: CAM folder not found")
    weights_file = model_weights_path(model_path)
    if not weights_file.is_file():
        raise WsssError(f"{weights_file}: affinity model not found")
    shard = parse_shard(shard)
    mine = shard_list(dataset.select_ids(ids), shard)
    settings = {
        **dataset_settings(dataset),
        "mode": mode,
        "beta": float(beta),
        "num_squarings": int(num_squarings),
        "radius": int(radius),
        "flip": bool(flip),
        "normalize": normalize,
    }
    with stage_run(
        out_dir,
        "random_walk",
        settings,
        {"cams": cam_dir, "model": weights_file},
        digests=("model",),
        force=force,
        shard=shard,
    ) as run:
        todo = [i for i in mine if not (out_dir / f"{i}.npz").is_file()]
        if not todo:
            return out_dir  # nothing new: keep the record of the run that wrote these maps
        model = load_affinity_model(weights_file, device)
        start = time.perf_counter()
        for image_id in tqdm(todo, desc="random walk", unit="img", disable=not progress):
            shape = image_size(dataset.image_path(image_id))
            keys, cam = load_checked_cam(dataset, cam_dir, image_id, shape)
            refined = refine_cam(
                model, dataset.image(image_id), cam, beta, num_squarings, radius, flip, normalize, mode
            )
            save_cam(out_dir / f"{image_id}.npz", keys, refined)
        elapsed = time.perf_counter() - start
        run.finish(
            {**settings, "model": str(weights_file), "mode": mode, "shard": list(shard)},
            timings={"total_s": round(elapsed, 3), "per_image_s": round(elapsed / len(todo), 4)},
            extra={
                "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
                "num_ids": len(mine),
                "written": len(todo),
                "suggested_tau": SUGGESTED_TAU,
                "model_meta": model.meta_info,
            },
        )
    return out_dir

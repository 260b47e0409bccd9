"""Method "eps" (Lee et al. 2021; the loss follows the authors' code, halbielee/EPS): C + 1
class maps trained with the image-level classification loss and saliency feedback
(docs/methods.md §1).

Also home of what every saliency-supervised method shares: :func:`saliency_feedback_loss`
and :class:`SaliencyCamTrainer` (saliency source, C + 1 maps, method options).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.cam.base import CamTrainConfig, CamTrainer, register_cam_method
from wsss.data.base import Dataset
from wsss.io import WsssError
from wsss.models.cam_net import CamNet

OVERLAP_EPS = 1e-4  # added per map cell to the overlap's denominator, as EPS's released code does


def estimated_saliency(
    maps: torch.Tensor,
    saliency: torch.Tensor,
    labels: torch.Tensor,
    overlap_threshold: float = 0.4,
    mu: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ŝ of docs/methods.md §1 and the saliency target S it is compared with, both B×1×h×w.

    ``maps`` are the raw maps B×(C+1)×h×w (background last), ``saliency`` B×1×H×W in [0, 1],
    ``labels`` multi-hot B×C. S is resampled to the map grid by nearest neighbour (torch's
    ``F.interpolate`` default, what halbielee/EPS does). Present classes whose rounded map
    overlaps the rounded saliency by more than ``overlap_threshold``
    (o_c = |round p_c ∩ round S| / (|round p_c| + 1e-4·h·w)) count as foreground; the others
    (co-occurring stuff such as water under a boat) join the background, so the saliency map
    does not punish the network for seeing them.
    """
    batch, num_maps = maps.shape[:2]
    if labels.shape != (batch, num_maps - 1):
        raise WsssError(
            f"saliency_feedback_loss: labels {tuple(labels.shape)} do not fit maps {tuple(maps.shape)}"
        )
    probs = torch.softmax(maps.float(), dim=1)
    height, width = probs.shape[-2:]
    target = saliency.float()
    if target.shape[-2:] != probs.shape[-2:]:
        target = F.interpolate(target, (height, width), mode="nearest")
    fg_probs = probs[:, :-1]
    rounded = (fg_probs > 0.5).float()  # = torch.round on [0, 1] (0.5 rounds to even, 0)
    denominator = rounded.sum(dim=(2, 3)) + OVERLAP_EPS * height * width
    overlap = (rounded * (target > 0.5).float()).sum(dim=(2, 3)) / denominator
    present = labels > 0.5
    foreground = (present & (overlap > overlap_threshold)).float()
    to_background = (present & (overlap <= overlap_threshold)).float()
    fg_sum = (fg_probs * foreground[:, :, None, None]).sum(dim=1, keepdim=True)
    bg_sum = probs[:, -1:] + (fg_probs * to_background[:, :, None, None]).sum(dim=1, keepdim=True)
    return mu * fg_sum + (1.0 - mu) * (1.0 - bg_sum), target


def saliency_feedback_loss(
    maps: torch.Tensor,
    saliency: torch.Tensor,
    labels: torch.Tensor,
    overlap_threshold: float = 0.4,
    mu: float = 0.5,
) -> torch.Tensor:
    """L_sal = mean (Ŝ − S)² over pixels and batch; arguments as :func:`estimated_saliency`."""
    predicted, target = estimated_saliency(maps, saliency, labels, overlap_threshold, mu)
    return ((predicted - target) ** 2).mean()


def resolve_saliency_dir(dataset: Dataset, source: str | None, method: str) -> Path:
    """``source``: a folder of ``<id>.png`` maps, or a source name under the dataset's saliency/."""
    if not source:
        raise WsssError(
            f"{dataset.root}: method {method!r} needs saliency maps: set the 'saliency' option "
            "(--saliency DIR or a source name such as 'good')"
        )
    if Path(source).is_dir():
        return Path(source)
    named = dataset.saliency_dir(source)
    if named.is_dir():
        return named
    raise WsssError(f"{source}: saliency option is neither a folder nor a source in {named.parent}")


class SaliencyCamTrainer(CamTrainer):
    """A CAM net with a background map, fed the batch's saliency maps.

    ``option_defaults`` lists the method's ``method_options`` keys; :attr:`options` holds
    them merged with the user's values (an unknown key is an error).
    """

    option_defaults: dict[str, float] = {}

    def __init__(
        self, dataset: Dataset, out_dir: str | os.PathLike, config: CamTrainConfig, progress: bool = True
    ):
        self.options = self.parse_options(config)
        saliency_dir = resolve_saliency_dir(dataset, config.saliency, self.method_name)
        super().__init__(dataset, out_dir, config, progress)
        self.data.use_saliency(saliency_dir)

    @classmethod
    def parse_options(cls, config: CamTrainConfig) -> dict[str, float]:
        unknown = sorted(set(config.method_options) - set(cls.option_defaults))
        if unknown:
            raise WsssError(
                f"method_options: unknown option(s) {unknown} for method {cls.method_name!r}; "
                f"known: {sorted(cls.option_defaults)}"
            )
        options = {**cls.option_defaults, **config.method_options}
        for key, value in options.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise WsssError(f"method_options: {key} must be a number, got {value!r}")
            options[key] = float(value)
        if (
            not 0.0 <= options.get("overlap_threshold", 0.0) <= 1.0
            or not 0.0 <= options.get("mu", 0.0) <= 1.0
        ):
            raise WsssError("method_options: overlap_threshold and mu must be in [0, 1]")
        return options

    def build_models(self) -> None:
        c = self.config
        self.model = CamNet(
            c.backbone,
            self.num_classes,
            c.pretrained,
            c.weights,
            c.output_stride,
            background_map=True,
            head_conv=c.head_conv,
        )

    def saliency_loss(self, maps: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return saliency_feedback_loss(
            maps, batch["saliency"], batch["label"], self.options["overlap_threshold"], self.options["mu"]
        )


@register_cam_method("eps")
class EpsTrainer(SaliencyCamTrainer):
    """Loss = cls(GAP of the C foreground maps, y) + ``sal_weight`` · L_sal.

    method_options (defaults from EPS's released code: ``train.py`` adds the two losses,
    ``script/voc12_eps.sh`` sets τ 0.4, ``main.py`` λ 0.5): ``sal_weight`` 1.0,
    ``overlap_threshold`` 0.4 (EPS's τ), ``mu`` 0.5 (EPS's λ, weight of the foreground term in Ŝ).
    """

    option_defaults = {"sal_weight": 1.0, "overlap_threshold": 0.4, "mu": 0.5}

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, maps = self.train_model(batch["image"])
        cls = self.cls_loss(logits, batch["label"])
        sal = self.saliency_loss(maps, batch)
        return {"loss": cls + self.options["sal_weight"] * sal, "cls": cls, "sal": sal}

"""Method "smvwe" (seed 002, docs/methods.md §1): a visual-word codebook on the backbone features
plus EPS's saliency feedback on C + 1 class maps.

The word head (codebook, word classifier, word→image mapping) only shapes the backbone
during training; the saved model is the plain C + 1-map :class:`~wsss.models.CamNet`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wsss.cam.base import CamTrainConfig, register_cam_method
from wsss.cam.eps import SaliencyCamTrainer
from wsss.io import WsssError


def word_assignment(
    features: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft word assignment of every feature vector of B×D×h×w features to a K×D codebook.

    Returns (P B×N×K with P_i = softmax_k(−‖f_i − B_k‖₁ / T), word labels z B×K — 1 where
    word k is some pixel's most probable word — and the soft histogram e = mean_i P_i, B×K).
    The L1 distance runs through ``torch.cdist``, whose kernels never hold a B×N×K×D tensor.
    """
    batch, dim = features.shape[:2]
    flat = features.float().flatten(2).transpose(1, 2)  # B×N×D
    distances = torch.cdist(flat, codebook.float().unsqueeze(0).expand(batch, -1, -1), p=1.0)
    probs = torch.softmax(-distances / temperature, dim=2)
    nearest = probs.detach().argmax(dim=2)  # B×N
    word_labels = torch.zeros(batch, codebook.shape[0], device=features.device)
    word_labels.scatter_(1, nearest, 1.0)
    return probs, word_labels, probs.mean(dim=1)


class VisualWordHead(nn.Module):
    """Codebook B (K×D), W_word (D→K on GAP(f)) and W_w2i (K→C on the histogram); 1×1 convs
    on pooled vectors are linear layers, without bias like the CAM classifier."""

    def __init__(self, feature_channels: int, num_words: int, num_classes: int):
        super().__init__()
        # features are post-ReLU activations of order 1: start the words among them
        self.codebook = nn.Parameter(torch.rand(num_words, feature_channels))
        self.word_classifier = nn.Linear(feature_channels, num_words, bias=False)
        self.word_to_image = nn.Linear(num_words, num_classes, bias=False)

    def forward(self, features: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
        _probs, word_labels, histogram = word_assignment(features, self.codebook, temperature)
        return {
            "word_logits": self.word_classifier(features.float().mean(dim=(2, 3))),
            "word_labels": word_labels,
            "image_logits": self.word_to_image(histogram),
        }


@register_cam_method("smvwe")
class SmvweTrainer(SaliencyCamTrainer):
    """Loss = cls(W_w2i·e, y) + cls(W_word·GAP(f), z_word) + ``sal_weight``·L_sal
    + ``cam_cls_weight``·cls(GAP of the C foreground maps, y).

    method_options: ``num_words`` 256 (K), ``temperature`` 1.0 (T), ``sal_weight`` 1.0,
    ``overlap_threshold`` 0.4 (δ), ``mu`` 0.5, ``cam_cls_weight`` 1.0. The last term is not
    among docs/methods.md's three: it is the "classification network based on image-level labels"
    whose C + 1 maps the seed evaluates; without it (``cam_cls_weight=0``, the literal
    three-term total) the class maps learn classes only through the saliency loss.
    """

    option_defaults = {
        "num_words": 256.0,
        "temperature": 1.0,
        "sal_weight": 1.0,
        "overlap_threshold": 0.4,
        "mu": 0.5,
        "cam_cls_weight": 1.0,
    }

    @classmethod
    def parse_options(cls, config: CamTrainConfig) -> dict[str, float]:
        options = super().parse_options(config)
        if options["num_words"] < 2 or options["num_words"] != int(options["num_words"]):
            raise WsssError(f"method_options: num_words must be an integer >= 2, got {options['num_words']}")
        if options["temperature"] <= 0:
            raise WsssError(f"method_options: temperature must be > 0, got {options['temperature']}")
        return options

    def build_models(self) -> None:
        super().build_models()
        self.words = VisualWordHead(
            self.model.feature_channels, int(self.options["num_words"]), self.num_classes
        )
        self.train_words = self.wrap(self.words)  # on the device; DDP-synchronised under torchrun

    def param_groups(self) -> list[dict[str, Any]]:
        """The word head is new like the CAM head: it trains at the head's learning rate."""
        c = self.config
        words = {"params": list(self.words.parameters()), "lr": c.lr * c.head_lr_mult, "name": "words"}
        return [*super().param_groups(), words]

    def extra_state(self) -> dict[str, Any]:
        return {"words": self.words.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.words.load_state_dict(state["words"])

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, maps, features = self.train_model(batch["image"], return_features=True)
        words = self.train_words(features, self.options["temperature"])
        w2i = self.cls_loss(words["image_logits"], batch["label"])
        word = self.cls_loss(words["word_logits"], words["word_labels"])
        sal = self.saliency_loss(maps, batch)
        losses = {"w2i": w2i, "word": word, "sal": sal}
        total = w2i + word + self.options["sal_weight"] * sal
        if self.options["cam_cls_weight"]:
            losses["cls"] = self.cls_loss(logits, batch["label"])
            total = total + self.options["cam_cls_weight"] * losses["cls"]
        return {"loss": total, **losses}

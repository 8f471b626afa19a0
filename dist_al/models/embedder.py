"""The (p, h) every strategy needs, from any nn.Module.

The final nn.Linear (found automatically or named) is hooked: its input is h and the softmax of its output is p,
so user models need no special forward signature.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_al.models.build import ModelError, classifier_layer


class Embedder:
    """Runs the model and returns (p, h) per batch: softmax of the classifier output and its input."""

    def __init__(
        self,
        model: nn.Module,
        classifier: str | None = None,
        device: str | torch.device = "cpu",
        autocast: str | None = None,
    ):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.layer = classifier_layer(model, classifier)
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[autocast]
        self._captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.layer.register_forward_hook(lambda _m, inputs, output: self._captured.append((inputs[0], output)))

    @property
    def n_classes(self) -> int:
        return self.layer.out_features

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, h) of a batch: ``x`` is a reader's output, a tensor (``model(x)``) or a dict of them
        (``model(**x)``)."""
        self._captured.clear()
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            if isinstance(x, dict):
                self.model(**{k: v.to(self.device, non_blocking=True) for k, v in x.items()})
            else:
                self.model(x.to(self.device, non_blocking=True))
        if len(self._captured) != 1:
            raise ModelError(
                f"the classifier layer ran {len(self._captured)} times in one forward pass; "
                "name the final layer in model.classifier"
            )
        h, logits = self._captured[0]
        return torch.softmax(logits.float(), 1), h.float().reshape(len(logits), -1)

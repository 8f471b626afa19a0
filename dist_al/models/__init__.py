"""Models: built-in factories (``model.factory: dist_al.models:NAME``), building from a config, and the
(p, h) embedder every strategy needs."""

from dist_al.models.factories import cnn, mlp, resnet, text_classifier

__all__ = ["cnn", "mlp", "resnet", "text_classifier"]

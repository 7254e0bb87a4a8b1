"""Models: our ResNet family, the backbone registry and the classifier."""

from floranet.models import backbones, classifier, resnet

__all__ = ["backbones", "classifier", "resnet"]

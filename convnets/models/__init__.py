"""Model zoo. Importing this package registers every family (one module per family)."""

from convnets.models import (  # noqa: F401
    densenet,
    inception,
    mnist_resnet,
    nin,
    resnet_cifar,
    resnet_imagenet,
)
from convnets.models.registry import (
    ModelEntry,
    build_model,
    build_on_meta,
    check_options,
    get_entry,
    list_models,
    model_identity,
    register_model,
)

__all__ = [
    "ModelEntry",
    "build_model",
    "build_on_meta",
    "check_options",
    "get_entry",
    "list_models",
    "model_identity",
    "register_model",
]

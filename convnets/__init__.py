"""convnets: exact reproductions of classic convolutional networks, and the tools to train,
track and compare them."""

from convnets.complexity import complexity
from convnets.models import build_model, list_models

__all__ = ["build_model", "complexity", "list_models"]
__version__ = "0.1.0"

"""convnets: exact reproductions of classic convolutional networks, and the tools to train,
track and compare them.

The top-level names are imported lazily, so that ``convnets.names`` (the torch-free contract
shared with ``analysis``) can be imported without importing torch.
"""

__all__ = ["build_model", "complexity", "list_models"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "complexity":
        from convnets.complexity import complexity

        return complexity
    if name in ("build_model", "list_models"):
        from convnets import models

        return getattr(models, name)
    raise AttributeError(f"module 'convnets' has no attribute {name!r}")

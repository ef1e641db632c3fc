"""convnets: exact reproductions of classic convolutional networks, and the tools to train,
track and compare them.

The top-level names are imported lazily, so that ``convnets.names`` (the torch-free contract
shared with ``analysis``) can be imported without importing torch.
"""

import sys
import types

__all__ = ["build_model", "complexity", "list_models"]
__version__ = "0.1.0"


class _Package(types.ModuleType):
    """``convnets.complexity`` is the function, although a submodule has the same name: the
    import system binds the submodule to the package when it is first imported, and this
    property keeps the public function in its place."""

    @property
    def complexity(self):
        from convnets.complexity import complexity

        return complexity

    @complexity.setter
    def complexity(self, value) -> None:  # the submodule being bound: keep the function
        pass


sys.modules[__name__].__class__ = _Package


# build_model / list_models on first use: `import convnets` (for names, config, the ledger) then
# does not import every model module.
def __getattr__(name: str):
    if name in ("build_model", "list_models"):
        from convnets import models

        return getattr(models, name)
    raise AttributeError(f"module 'convnets' has no attribute {name!r}")

"""Package facades whose names load on first use, so that `import model.config` or `import
ops.config` (all the command line needs to read and check a run config) does not import torch.

Lives in ops/, the lowest layer, so that every package may use it.
"""

import importlib
import sys
import types


class LazyPackage(types.ModuleType):
    """A package module whose exported names come from submodules when first read.

    An exported name that is also a submodule's name (`ops.linear_cross_entropy` the function and
    the file) stays the function, as an eager `from .x import x` would leave it: the import
    system's own `setattr(package, submodule_name, module)` is ignored for those names.
    """

    _lazy_sources: dict[str, str]

    def __getattr__(self, name: str):
        sources = self.__dict__.get("_lazy_sources", {})
        if name not in sources:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name]), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        shadowing = (isinstance(value, types.ModuleType) and name in self.__dict__.get("_lazy_sources", {})
                     and value.__name__ == f"{self.__name__}.{name}")
        if not shadowing:
            types.ModuleType.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self.__dict__.get("_lazy_sources", {})})


def export_lazily(package_name: str, sources: dict[str, str]) -> list[str]:
    """Make `package_name` a LazyPackage exporting `sources` ({name: submodule}); returns __all__.

    Example (in a package's __init__.py): __all__ = export_lazily(__name__, {"wkv7": "ops.dispatch"})
    """
    package = sys.modules[package_name]
    package.__class__ = LazyPackage
    types.ModuleType.__setattr__(package, "_lazy_sources", dict(sources))
    return list(sources)

"""Make `lm_eval --model metastate` work with the stock lm-eval command.

lm-eval 0.4 finds models only in its own registry (no entry-point discovery), so a one-line
`.pth` file in site-packages (written by `python -m evals.lm_eval_hook`, which `make setup` runs)
calls `install()` at interpreter start. `install()` costs microseconds and imports nothing of
lm-eval: it waits for `lm_eval.api.registry` to be imported and then registers the name
`metastate` as a lazy placeholder for `evals.harness:MetastateLM`, so lm-eval imports the adapter
(and torch) only when that model is asked for.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import sysconfig
from pathlib import Path

MODEL_NAME = "metastate"
TARGET = "evals.harness:MetastateLM"
REGISTRY_MODULE = "lm_eval.api.registry"
PTH_NAME = "metastate-lm-eval.pth"
# Silent when this checkout has no evals.lm_eval_hook (a .pth line must not break Python).
PTH_LINE = ('import importlib.util as _u; _u.find_spec("evals.lm_eval_hook") and '
            '__import__("evals.lm_eval_hook").lm_eval_hook.install()\n')


def register(registry_module) -> None:
    if MODEL_NAME not in registry_module.model_registry:
        registry_module.model_registry.register(MODEL_NAME, target=TARGET)


class _RegistryWatcher(importlib.abc.MetaPathFinder):
    """Wraps the loader of lm_eval.api.registry so `register` runs right after it executes."""

    def find_spec(self, name, path=None, target=None):
        if name != REGISTRY_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            register(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register `metastate` with lm-eval now if its registry is loaded, else once it loads."""
    if REGISTRY_MODULE in sys.modules:
        register(sys.modules[REGISTRY_MODULE])
    elif not any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def is_installed() -> bool:
    path = pth_path()
    return path.is_file() and path.read_text() == PTH_LINE


def write_pth() -> Path:
    """Write (or refresh) the .pth file in this interpreter's site-packages."""
    path = pth_path()
    path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    print(f"registered lm-eval model '{MODEL_NAME}' via {write_pth()}")

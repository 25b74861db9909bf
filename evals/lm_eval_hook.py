"""Make `lm_eval --model metastate` work with the stock lm-eval command.

lm-eval 0.4 finds models only in its own registry (no entry-point discovery), so
`python -m evals.lm_eval_hook` (which `make setup` runs) copies this self-contained file into
site-packages as `metastate_lm_eval_hook.py` with a one-line `.pth` that calls `install()` at
interpreter start. The copy imports nothing of this project (importing the `evals` package at
start-up would pin it before PYTHONPATH or sys.path changes could choose a checkout).
`install()` costs microseconds and imports nothing of lm-eval: it waits for
`lm_eval.api.registry` to be imported and then registers the name `metastate` as a lazy
placeholder for `evals.harness:MetastateLM`, so lm-eval imports the adapter (and torch) only when
that model is asked for.
"""

import importlib.abc
import importlib.machinery
import sys

MODEL_NAME = "metastate"
TARGET = "evals.harness:MetastateLM"
REGISTRY_MODULE = "lm_eval.api.registry"
PTH_NAME = "metastate-lm-eval.pth"
COPY_NAME = "metastate_lm_eval_hook"
PTH_LINE = f"import {COPY_NAME}; {COPY_NAME}.install()\n"


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


def pth_path():
    import sysconfig
    from pathlib import Path

    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def is_installed() -> bool:
    """True when this interpreter's site-packages holds the .pth and an up-to-date copy."""
    from pathlib import Path

    pth, copy = pth_path(), pth_path().with_name(COPY_NAME + ".py")
    return (pth.is_file() and pth.read_text() == PTH_LINE and copy.is_file()
            and copy.read_text() == Path(__file__).read_text())


def write_pth():
    """Write (or refresh) the hook copy and its .pth file in this interpreter's site-packages."""
    from pathlib import Path

    pth = pth_path()
    pth.with_name(COPY_NAME + ".py").write_text(Path(__file__).read_text())
    pth.write_text(PTH_LINE)
    return pth


if __name__ == "__main__":
    print(f"registered lm-eval model '{MODEL_NAME}' via {write_pth()}")

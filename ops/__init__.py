"""Recurrences of the Meta-State stack (WKV-7, its Self-State-Encoder read-out, the meta-state)
and the fused, chunked head + cross-entropy.

The names below load on first use (PEP 562), so `import ops.config` stays free of torch.
"""

import importlib

_SOURCES = {
    "OpsConfig": "ops.config", "BACKENDS": "ops.config",
    "Wkv7Transition": "ops.dispatch", "Wkv7Scan": "ops.dispatch", "wkv7": "ops.dispatch",
    "wkv7_sse": "ops.dispatch", "meta_state_scan": "ops.dispatch", "resolve_backend": "ops.dispatch",
    "linear_cross_entropy": "ops.linear_cross_entropy",
}
__all__ = list(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'ops' has no attribute {name!r}")
    return getattr(importlib.import_module(_SOURCES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

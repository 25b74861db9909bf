"""Recurrences of the Meta-State stack (WKV-7, its Self-State-Encoder read-out, the meta-state)
and the fused, chunked head + cross-entropy.

The names below load on first use (ops/lazy_package.py), so `import ops.config` stays free of torch.
"""

from ops.lazy_package import export_lazily

__all__ = export_lazily(__name__, {
    "OpsConfig": "ops.config", "BACKENDS": "ops.config",
    "Wkv7Transition": "ops.dispatch", "Wkv7Scan": "ops.dispatch", "wkv7": "ops.dispatch",
    "wkv7_sse": "ops.dispatch", "meta_state_scan": "ops.dispatch", "resolve_backend": "ops.dispatch",
    "linear_cross_entropy": "ops.linear_cross_entropy",
})

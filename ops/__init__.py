"""Recurrences of the Meta-State stack (WKV-7, its Self-State-Encoder read-out, the meta-state)
and the fused, chunked head + cross-entropy."""

from ops.config import BACKENDS, OpsConfig
from ops.dispatch import Wkv7Scan, Wkv7Transition, meta_state_scan, resolve_backend, wkv7, wkv7_sse
from ops.linear_cross_entropy import linear_cross_entropy

__all__ = ["OpsConfig", "BACKENDS", "Wkv7Transition", "Wkv7Scan", "wkv7", "wkv7_sse",
           "meta_state_scan", "resolve_backend", "linear_cross_entropy"]

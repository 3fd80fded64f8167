"""Sliding-window request limits and token budgets, admitted in one Redis script call."""

from sidecar.limits.limiter import Admission, Limiter
from sidecar.limits.tokens import estimate_tokens

__all__ = ["Admission", "Limiter", "estimate_tokens"]

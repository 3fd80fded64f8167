"""Every label value the sidecar can put on a metric, gathered from where each is defined, so
`Metrics.export_known` can export every series at 0 from the start."""

from __future__ import annotations

from sidecar.errors import SidecarError
from sidecar.guards.builtin import INJECTION, INPUT_TOO_LONG
from sidecar.guards.leaks import CANARY_KIND, LEAK_KIND
from sidecar.guards.pii import PII_SPECS
from sidecar.guards.secrets import SECRET_SPECS
from sidecar.metrics import KnownLabels
from sidecar.policies import Policies
from sidecar.proxy.routes import ROUTE_OF_RESOURCE

# Outcomes counted under a reason of their own instead of a refusal (built-in guards' reasons;
# a plug-in guard's reasons are its own and appear when it first reports one).
SOFT_OUTCOMES = tuple(f"{outcome}:{reason}" for outcome in ("flag", "shadow")
                      for reason in (INJECTION, INPUT_TOO_LONG))
# Kinds found other than by a pattern table: exact-match secrets the output scanner is given at
# start and the e-mail finder (guards/redact.py), and system-prompt leaks (guards/leaks.py).
OTHER_KINDS = ("secret:provider_key", "secret:admin_token", "pii:email", LEAK_KIND, CANARY_KIND)
STORE_OPS = ("limits_admit", "limits_settle", "limits_refund", "abuse_check", "abuse_output",
             "conversations")
DEGRADED_FEATURES = ("limits", "abuse")
ABUSE_SIGNALS = tuple(f"{scope}:{name}" for scope in ("key", "tenant")
                      for name in ("volume", "distinct", "template", "embeddings", "output", "daily"))


def _error_codes() -> set[str]:
    codes: set[str] = set()
    pending: list[type[SidecarError]] = [SidecarError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not SidecarError:
            codes.add(cls.code)
    return codes


def known_labels(policies: Policies) -> KnownLabels:
    guards = sorted({step.name for policy in policies.by_name.values()
                     for step in policy.pipeline.steps})
    return KnownLabels(
        routes=sorted({*ROUTE_OF_RESOURCE.values(), "unknown"}),
        reasons=sorted(_error_codes() | set(SOFT_OUTCOMES)),
        kinds=sorted({spec.kind for spec in (*SECRET_SPECS, *PII_SPECS)} | set(OTHER_KINDS)),
        store_ops=STORE_OPS, features=DEGRADED_FEATURES, signals=ABUSE_SIGNALS, guards=guards)

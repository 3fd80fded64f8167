"""Named guard policies: build each one's pipeline once, and pick the one a request runs.

`policies.default` is built from the `[input]` and `[output]` sections, and a
`[policies.default]` table may retune it; every other `[policies.<name>]` starts from the
default and changes what it names. A request runs its key's policy (the key record's `policy`
field, set through the admin API or the CLI), else the policy that lists its tenant, else
`default`. Guards are the built-ins (`validate`, `injection`, `sanitize`, `redact_input`,
`output`) or classes published under the entry-point group `sidecar.guards`, built with the
policy's `options`. Every name is resolved at start, so a typo stops the sidecar with one line
instead of failing requests.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from sidecar.errors import ConfigError
from sidecar.guards.base import Guard, Stage
from sidecar.guards.builtin import InjectionGuard, RedactInputGuard, SanitizeGuard, ValidateGuard
from sidecar.guards.injection import InjectionDetector, default_detector
from sidecar.guards.output import OutputGuard
from sidecar.guards.pipeline import Pipeline, Step
from sidecar.guards.redact import OutputScanner
from sidecar.guards.validate import InputLimits
from sidecar.model import Principal
from sidecar.settings import BUILTIN_GUARDS, GuardPolicy, Policy, Settings

DEFAULT = "default"
ENTRY_POINT_GROUP = "sidecar.guards"


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """One policy, built: its input pipeline, its output guard (None when output scanning is
    off) and what the request parser needs to know."""

    name: str
    pipeline: Pipeline
    output: OutputGuard | None
    trusted_roles: frozenset[str]
    allow_token_ids: bool
    output_steps: tuple[Step, ...] = ()  # plug-in guards over whole replies


def default_policy(settings: Settings) -> Policy:
    """The `default` policy as the `[input]` and `[output]` sections describe it."""
    inp, out = settings.input, settings.output
    guards = ["validate"]
    if inp.injection_action != "off":
        guards.append("injection")
    if inp.sanitize:
        guards.append("sanitize")
    if inp.redact_pii:
        guards.append("redact_input")
    if out.scan:
        guards.append("output")
    tuning = (
        GuardPolicy("injection", mode=inp.injection_mode,
                    action="flag" if inp.injection_action == "flag" else "",
                    threshold=inp.injection_threshold),
        GuardPolicy("output", mode=out.mode, actions=out.actions),
    )
    scanned = set(inp.injection_roles)
    trusted = tuple(r for r in ("system", "developer") if r not in scanned)
    return Policy(DEFAULT, guards=tuple(guards), trusted_roles=trusted, tuning=tuning)


def _merge(base: Policy, override: Policy) -> Policy:
    """`override` on top of `base`: its lists replace, its guard tables retune field by field."""
    tuning = {g.name: g for g in base.tuning}
    for g in override.tuning:
        old = tuning.get(g.name)
        if old is None:
            tuning[g.name] = g
            continue
        changed = {f.name: getattr(g, f.name) for f in dataclasses.fields(g)
                   if getattr(g, f.name) != f.default}
        tuning[g.name] = dataclasses.replace(old, **changed)
    return Policy(override.name, guards=override.guards or base.guards,
                  trusted_roles=override.trusted_roles, allow_token_ids=override.allow_token_ids,
                  tenants=override.tenants, tuning=tuple(tuning.values()))


@functools.cache
def plugin_guards() -> Mapping[str, Any]:
    """Guard classes published under the `sidecar.guards` entry-point group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


class Policies:
    """Every configured policy, built once at start."""

    def __init__(self, settings: Settings, *, scanner: OutputScanner | None = None,
                 plugins: Callable[[], Mapping[str, Any]] = plugin_guards) -> None:
        self.settings = settings
        self._plugins = plugins
        self._scanner = scanner
        self._detectors: dict[float, InjectionDetector] = {}
        self._injection_guards: dict[float, InjectionGuard] = {}
        base = default_policy(settings)
        configured = {p.name: p for p in settings.policies}
        if DEFAULT in configured:
            base = _merge(base, configured.pop(DEFAULT))
        policies = {DEFAULT: base, **{n: _merge(base, p) for n, p in configured.items()}}
        self.by_name: dict[str, ActivePolicy] = {n: self._build(p) for n, p in policies.items()}
        self.by_tenant: dict[str, ActivePolicy] = {}
        for policy in policies.values():
            for tenant in policy.tenants:
                if tenant in self.by_tenant:
                    raise ConfigError(f"policies.{policy.name}.tenants: tenant {tenant!r} is "
                                      f"already in policy {self.by_tenant[tenant].name!r}")
                self.by_tenant[tenant] = self.by_name[policy.name]
        self.default = self.by_name[DEFAULT]

    def for_principal(self, principal: Principal) -> ActivePolicy:
        """The key's own policy, else its tenant's, else the default."""
        if principal.policy:
            chosen = self.by_name.get(principal.policy)
            if chosen is not None:
                return chosen
        return self.by_tenant.get(principal.tenant, self.default)

    @property
    def scanner(self) -> OutputScanner:
        if self._scanner is None:
            s = self.settings
            # Our own key format is in the shared secret table (secret:sidecar, same shape as
            # auth.keyformat.KEY_REGEX; a test keeps the two in step).
            anthropic = [("secret:provider_key", s.anthropic_key)] if s.anthropic_key else []
            self._scanner = OutputScanner(provider_key=s.upstream_key or None,
                                          admin_token=s.admin.token or None, ip=s.output.detect_ip,
                                          extra_exact=anthropic)
        return self._scanner

    def _build(self, policy: Policy) -> ActivePolicy:
        steps: list[Step] = []
        output: OutputGuard | None = None
        seen: set[str] = set()
        for name in policy.guards:
            where = f"policies.{policy.name}.guards"
            if name in seen:
                raise ConfigError(f"{where}: guard {name!r} is listed twice")
            seen.add(name)
            tuning = policy.guard(name) or GuardPolicy(name)
            if not tuning.enabled:
                continue
            if name == "output":
                output = self._output(tuning)
                continue
            guard = self._guard(policy, name, tuning)
            steps.append(Step(guard, mode=tuning.mode, action=tuning.action,
                              budget_s=tuning.budget_s, on_timeout=tuning.on_timeout))
        pipeline = Pipeline(policy.name, tuple(steps))
        return ActivePolicy(policy.name, pipeline, output, frozenset(policy.trusted_roles),
                            policy.allow_token_ids, tuple(pipeline.output_steps()))

    def _guard(self, policy: Policy, name: str, tuning: GuardPolicy) -> Guard:
        s = self.settings
        if name == "validate":
            i = s.input
            return ValidateGuard(InputLimits(max_messages=i.max_messages,
                                             max_chars_per_message=i.max_chars_per_message,
                                             max_chars_per_request=i.max_chars_per_request,
                                             max_tokens_per_request=i.max_tokens_per_request))
        if name == "injection":
            return self.injection_guard(tuning.threshold)
        if name == "sanitize":
            return SanitizeGuard()
        if name == "redact_input":
            return RedactInputGuard(OutputScanner(provider_key=s.upstream_key or None))
        return self._plugin(policy, name, tuning)

    def injection_guard(self, threshold: float | None = None) -> InjectionGuard:
        """One injection guard (and its verdict cache) per threshold, shared by policies."""
        threshold = self.settings.input.injection_threshold if threshold is None else threshold
        guard = self._injection_guards.get(threshold)
        if guard is None:
            detector = default_detector()
            if detector.threshold != threshold:
                detector = InjectionDetector(threshold=threshold)
            guard = self._injection_guards[threshold] = InjectionGuard(detector)
        return guard

    def _output(self, tuning: GuardPolicy) -> OutputGuard:
        out = self.settings.output
        return OutputGuard(self.scanner, dict(tuning.actions or out.actions),
                           shadow=tuning.mode == "shadow",
                           system_prompt_min_words=out.system_prompt_min_words, canary=out.canary,
                           holdback=out.holdback_chars)

    def _plugin(self, policy: Policy, name: str, tuning: GuardPolicy) -> Guard:
        where = f"policies.{policy.name}.guards"
        entry = self._plugins().get(name)
        if entry is None:
            known = ", ".join([*BUILTIN_GUARDS, *sorted(self._plugins())])
            raise ConfigError(f"{where}: unknown guard {name!r} (known: {known})")
        try:
            cls = entry.load() if hasattr(entry, "load") else entry
            guard = cls(**dict(tuning.options))
        except Exception as exc:  # a third party's constructor: report it, never crash oddly
            raise ConfigError(f"{where}: guard {name!r} could not be built "
                              f"({type(exc).__name__})") from None
        if not isinstance(guard, Guard) or not isinstance(getattr(guard, "stage", None), Stage):
            raise ConfigError(f"{where}: guard {name!r} lacks name, stage or check()")
        if guard.stage is Stage.STREAM:
            raise ConfigError(f"{where}: guard {name!r}: plug-in guards run at the input or "
                              "output stage")
        return guard

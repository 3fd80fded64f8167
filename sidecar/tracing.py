"""OpenTelemetry traces, behind one small object that costs nothing when tracing is off.

Off unless the standard `OTEL_*` variables ask for it (`OTEL_TRACES_EXPORTER=otlp|console`, or an
`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`) and the `otel` extra is installed
(`pip install 'ai-security-sidecar[otel]'`); `OTEL_SDK_DISABLED=true` wins. Off, `Tracing.span()`
returns one shared do-nothing context manager and no middleware is installed.

On: a SERVER span per proxied request, continuing the app's W3C `traceparent`; child spans for
auth, the guards, store calls and the provider call (a CLIENT span named after OpenTelemetry's
GenAI conventions, `chat <model>`), whose context goes to the provider as `traceparent`.
Attributes are ids, names, counts, verdicts and codes - never prompt or completion text, never
keys. JSON log lines written inside a span carry its `trace_id` and `span_id`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from sidecar import __version__
from sidecar.errors import ConfigError

if TYPE_CHECKING:  # the extra is optional: nothing below imports it unless tracing is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AttributeValue = str | bool | int | float | Sequence[str]

#: gen_ai.operation.name per proxy route (OpenTelemetry GenAI semantic conventions).
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}


class _NoSpan:
    """What a span helper yields when tracing is off: accepts attributes, records nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_SPAN = _NoSpan()


def mark_failed(span: Any, error_type: str) -> None:
    """Mark a real span failed, with `error.type` (a code or status, never a message)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def wanted(env: Mapping[str, str]) -> bool:
    """True when the standard OpenTelemetry variables ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


class Tracing:
    """The process's tracer, or nothing. One instance per proxy app (`app[TRACING]`)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer: Tracer | None = provider.get_tracer("ai-security-sidecar", __version__) \
            if provider is not None else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tracing:
        """Tracing as the OTEL_* environment configures it (off when it does not)."""
        env = os.environ if env is None else env
        if not wanted(env):
            return cls()
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        except ImportError:
            raise ConfigError("OTEL_*: tracing is configured but OpenTelemetry is not installed "
                              "(pip install 'ai-security-sidecar[otel]')") from None
        exporter_name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or \
            env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        exporter: Any
        if exporter_name == "console":
            exporter = ConsoleSpanExporter()
        elif exporter_name == "otlp" and protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter_name} with protocol {protocol}: only "
                              "otlp over http/protobuf and console are supported")
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "ai-security-sidecar",
                                    "service.version": __version__})
        provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER(_ARG)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    # -- spans ----------------------------------------------------------------------------------
    def span(self, name: str, **attributes: AttributeValue) -> AbstractContextManager[Any]:
        """A child span of the current one (a shared no-op when tracing is off)."""
        if self._tracer is None:
            return NO_SPAN
        return self._span(name, attributes)

    @contextmanager
    def _span(self, name: str, attributes: dict[str, AttributeValue], kind: Any = None,
              context: Any = None) -> Iterator[Span]:
        from opentelemetry.trace import SpanKind

        assert self._tracer is not None
        with self._tracer.start_as_current_span(
                name, context=context, kind=kind or SpanKind.INTERNAL, attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                code = getattr(exc, "code", None)  # SidecarError: its public code, never a message
                mark_failed(span, code if isinstance(code, str) else type(exc).__name__)
                raise

    def client_span(self, route: str, model: str, base_url: str) -> AbstractContextManager[Any]:
        """The provider call: a CLIENT span named `<operation> <model>` (GenAI conventions)."""
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry.trace import SpanKind

        operation = OPERATIONS.get(route, route)
        url = urlsplit(base_url)
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation, "gen_ai.system": "openai",
            "gen_ai.request.model": model, "server.address": url.hostname or ""}
        port = url.port or (443 if url.scheme == "https" else 80)
        attributes["server.port"] = port
        return self._span(f"{operation} {model}".strip(), attributes, SpanKind.CLIENT)

    def inject(self, headers: dict[str, str]) -> None:
        """Put the current span's context into outgoing headers (`traceparent`, `tracestate`)."""
        if self._tracer is not None:
            from opentelemetry import propagate

            propagate.inject(headers)

    # -- wiring ---------------------------------------------------------------------------------
    def middleware(self) -> Middleware:
        """The SERVER span around a request, continuing the app's `traceparent`. Outermost, so
        the access log line and every step run inside it."""
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        from sidecar.appstate import CONTEXT

        @web.middleware
        async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            parent = propagate.extract(request.headers)
            attributes: dict[str, AttributeValue] = {"http.request.method": request.method}
            with self._span(request.method, attributes, SpanKind.SERVER, parent) as span:
                response = await handler(request)
                ctx = request.get(CONTEXT)
                if ctx is not None:
                    span.update_name(f"{request.method} {ctx.route}")
                    span.set_attribute("http.route", ctx.route)
                    span.set_attribute("sidecar.request_id", ctx.request_id)
                    if ctx.key_id:
                        span.set_attribute("sidecar.key_id", ctx.key_id)
                    if ctx.reason:
                        span.set_attribute("sidecar.refusal", ctx.reason)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    mark_failed(span, ctx.reason if ctx is not None and ctx.reason else str(response.status))
                return response

        return tracing_middleware

    def log_filter(self) -> logging.Filter:
        """Adds `trace_id` and `span_id` of the current span to every log record."""
        from opentelemetry import trace

        class _TraceIds(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                context = trace.get_current_span().get_span_context()
                if context.is_valid:
                    record.trace_id = format(context.trace_id, "032x")
                    record.span_id = format(context.span_id, "016x")
                return True

        return _TraceIds()

    def install(self, app: web.Application) -> None:
        """Add the server span middleware and the log filter, and flush spans at cleanup."""
        if self.provider is None:
            return
        app.middlewares.insert(0, self.middleware())
        log_filter = self.log_filter()
        handlers = logging.getLogger().handlers
        for handler in handlers:
            handler.addFilter(log_filter)
        provider = self.provider

        async def flush(_: web.Application) -> None:
            for handler in handlers:
                handler.removeFilter(log_filter)
            provider.force_flush()
            provider.shutdown()

        app.on_cleanup.append(flush)

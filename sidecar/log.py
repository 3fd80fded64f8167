"""JSON logs, one object per line. Callers pass fields, never bodies, prompts, headers or keys."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Fields that may carry caller-controlled or secret text are dropped even if a caller passes them.
_FORBIDDEN_FIELDS = frozenset(
    {"authorization", "api_key", "key", "token", "prompt", "body", "content", "messages", "headers"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record and its `extra={"fields": {...}}` as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for name, value in fields.items():
                if name.lower() not in _FORBIDDEN_FIELDS:
                    out[name] = value
        trace_id = getattr(record, "trace_id", None)  # set inside a span when tracing is on
        if trace_id is not None:
            out["trace_id"] = trace_id
            out["span_id"] = getattr(record, "span_id", None)
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _NoParserTracebacks(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses (too many headers, a bad request line)
    with a full traceback: one unauthenticated client could flood the logs. Keep one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None and \
                record.exc_info[0].__name__ in _PARSER_ERRORS:
            record.msg = f"{record.getMessage()}: {record.exc_info[0].__name__}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


_PARSER_ERRORS = frozenset({"BadHttpMessage", "BadStatusLine", "LineTooLong", "InvalidHeader",
                            "BadHttpMethod", "TransferEncodingError", "ContentLengthError",
                            "HttpProcessingError", "InvalidURLError"})


def setup_logging(level: str) -> None:
    """Send every logger's records to stderr as JSON lines; silence aiohttp's own access log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").disabled = True
    # Admin audit lines are kept whatever the level: who changed which key must not depend on
    # how chatty the operator wants the rest of the log.
    logging.getLogger("sidecar.audit").setLevel(min(logging.INFO, logging.getLevelName(level)))
    # A library's warnings.warn() (redis-py has printed UserWarnings at start) becomes a JSON
    # line like every other, instead of raw text a log collector cannot parse.
    logging.captureWarnings(True)
    quiet_parser_errors()


def setup_cli_logging() -> None:
    """JSON lines at WARNING for the command line, unless the program that runs us (a test
    runner, an embedding application) configured logging already."""
    if not logging.getLogger().handlers:
        setup_logging("WARNING")


def quiet_parser_errors() -> None:
    """One line, no traceback, for each request aiohttp's parser refuses (idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _NoParserTracebacks) for f in server_log.filters):
        server_log.addFilter(_NoParserTracebacks())
    logging.Formatter.converter = time.gmtime


def log_fields(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log `msg` with structured fields (checked against the forbidden list by the formatter)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})

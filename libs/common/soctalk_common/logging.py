"""structlog configuration: JSON lines with service, correlation and causation ids, and redaction.

The redaction processor runs last before rendering, so no code path can log secret material by
accident: values of secret-named fields become ``[REDACTED]``, token-shaped strings are scrubbed, and
material the process registered (``register_secret``) is replaced wherever it appears.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars

from soctalk_common.redact import redact, scrub_patterns, scrub_text

_KNOWN: set[str] = set()


def register_secret(value: str) -> None:
    """Remember material this process handles so the log pipeline can scrub it anywhere in a line.

    Kept only as long as the process lives; callers register short-lived material and forget it.
    """
    if value and len(value) >= 8:
        _KNOWN.add(value)


def forget_secret(value: str) -> None:
    _KNOWN.discard(value)


def redaction_processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    cleaned = redact(event_dict)
    out: dict[str, Any] = {}
    for k, v in cleaned.items():
        if isinstance(v, str):
            v = scrub_patterns(v)
            if _KNOWN:
                v = scrub_text(v, _KNOWN)
        out[k] = v
    return out


def configure_logging(service: str, *, level: str = "INFO", json_output: bool = True,
                      stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for one process. Call once from a bootstrap."""
    out = stream or sys.stderr
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(
        colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redaction_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    bind_contextvars(service=service)
    # Libraries that log through stdlib go through the same redaction.
    handler = logging.StreamHandler(out)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = scrub_patterns(super().format(record))
        return scrub_text(text, _KNOWN) if _KNOWN else text


@contextlib.contextmanager
def bind_event_context(event: Any, **extra: Any) -> Iterator[None]:
    """Bind tenant, event, correlation and causation ids for every log line inside the block."""
    with bound_contextvars(
        tenant_id=str(event.tenant_id), event_id=str(event.event_id), event_type=event.event_type,
        correlation_id=str(event.correlation_id),
        causation_id=str(event.causation_id) if event.causation_id else None, **extra,
    ):
        yield

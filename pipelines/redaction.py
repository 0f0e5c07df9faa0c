"""Credentials out of what gradwatch shows of a URL: messages, logs and run parameters."""

from __future__ import annotations

import logging
import re
from typing import Any

# user or user:password between a URL's scheme and its host.
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the user and password of every URL in it removed (``https://u:p@host/x`` -> ``https://host/x``)."""
    return _USERINFO.sub("", text)


_factory_installed = False


def redact_logs() -> None:
    """Strip URL credentials from every log record of this process, whichever library writes it (fsspec logs
    each URL it fetches at DEBUG, user and password included). Installed once; later calls do nothing."""
    global _factory_installed
    if _factory_installed:
        return
    create = logging.getLogRecordFactory()

    def redacted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = create(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: logging reports it itself
            return record
        if "@" in message:
            record.msg, record.args = redact(message), None
        return record

    logging.setLogRecordFactory(redacted)
    _factory_installed = True

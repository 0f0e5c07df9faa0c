"""Credentials out of what gradwatch shows of a URL: messages, logs and run parameters."""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

# user or user:password between a URL's scheme and its host; up to the authority's last "@", since a password may
# hold one.
_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")
# Query parameters that are credentials: signed URLs of S3, GCS and Azure (SAS), and bearer tokens.
_SIGNED_QUERY = re.compile(
    r"(?<=[?&])(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|X-Goog-Credential|sig|"
    r"signature|token|access_token|api_key|apikey)=[^&#\s]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the user and password of every URL in it removed (``https://u:p@host/x`` -> ``https://host/x``),
    and the values of signing and token query parameters (``?X-Amz-Signature=...``, an Azure SAS ``sig=``) masked."""
    return _SIGNED_QUERY.sub(lambda match: f"{match.group(1)}=***", _USERINFO.sub("", text))


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
        except Exception:  # arguments that do not fit the format: logging reports it when it emits the record
            return record
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatters use a record's exc_text when it has one: the traceback, redacted.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(redacted)
    _factory_installed = True

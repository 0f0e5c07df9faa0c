"""Credentials out of what gradwatch shows of a URL: messages, logs and run parameters."""

from __future__ import annotations

import re

# user or user:password between a URL's scheme and its host.
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the user and password of every URL in it removed (``https://u:p@host/x`` -> ``https://host/x``)."""
    return _USERINFO.sub("", text)

"""The one spelling of a location, for sources, OUT and anything else a worker must find where the launcher meant.

Kept apart from :mod:`pipelines.sources` so that :mod:`pipelines.store` can use it without importing Beam.
"""

from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def canonical_uri(uri: str) -> str:
    """The one spelling of a URI: a local path absolute and normalised (``./a/../b.png`` is ``$PWD/b.png``), a
    ``file://`` URL as its path; other URLs as given. Credentials stay, for reading: ``image_identity`` in
    :mod:`pipelines.sources` drops them from what is stored."""
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    if _SCHEME.match(uri):  # s3://..., or a source kind's own prefix (glob:...)
        return uri
    return os.path.abspath(uri)

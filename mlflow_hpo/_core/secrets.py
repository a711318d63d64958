"""Credentials never leave the process: every message and every stored URI is redacted.

A tracking URI may carry ``user:password@`` (or a token as the user part), and MLflow reads
``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN`` from the environment. MLflow's own
error messages repeat the URI, so anything we print, raise or store goes through
:func:`redact` first.
"""

from __future__ import annotations

import os
import re
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
MASK = "***"


def redact(text: Any) -> str:
    """``text`` with URI credentials and the secret environment values masked."""
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", str(text))
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            out = out.replace(secret, MASK)
    return out


def strip_credentials(uri: str | None) -> str | None:
    """``uri`` without its userinfo part: what may be written to disk."""
    if uri is None:
        return None
    return _USERINFO.sub(lambda m: m.group("scheme"), uri)


def has_credentials(uri: str | None) -> bool:
    return uri is not None and _USERINFO.search(uri) is not None

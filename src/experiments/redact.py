"""Secrets out of every file and line: passwords of database URLs, masked.

The Optuna sweeper's storage is any SQLAlchemy URL, and SQLAlchemy takes a password in the
userinfo (``postgresql://user:PASSWORD@host/db``) or as a query parameter
(``...?password=PASSWORD``, and libpq's ``sslpassword``); the URL then travels in the command line,
Hydra's config, the lock holder's record and error messages. :func:`redact` masks it wherever it
sits in a text, :func:`redacted` in every string of a config. Ours rather than SQLAlchemy's
``render_as_string(hide_password=True)``: that one masks only the userinfo, and needs a URL that
parses. A leaf: nothing here imports another module of this package, or any library.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:PASSWORD@host: as SQLAlchemy parses it, the password runs from the first ":" after
# the user name to the next "@" (it may hold "/", "?", "#" or a space).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^:/\s]*:)(?P<secret>[^@\n]*)(?=@)")
# password=..., passwd=..., pwd=..., sslpassword=... in a URL's query or a libpq connection string
# (and PGPASSWORD=... in a command line).
_PARAMETER = re.compile(
    r"(?P<head>(?:(?<=[?&;\s'\"])|^)(?:pg)?(?:ssl)?(?:password|passwd|pwd)=)(?P<secret>[^&;\s'\"]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every URL (userinfo or query) and every ``password=`` masked."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: m.group("head") + (MASK if m.group("secret") else ""), text)
    return _PARAMETER.sub(lambda m: m.group("head") + MASK, text)


def redacted(value: Any) -> Any:
    """A plain container (dicts, lists, scalars) with every string :func:`redact`-ed."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value

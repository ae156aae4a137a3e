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

# scheme://user:PASSWORD@host: as SQLAlchemy parses it, the user name runs to the first ":" or "/"
# (it may hold "@" or a space), and the password from there to the next "@" (it may hold "/", "?",
# "#" or a space).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^:/\n'\"]*:)(?P<secret>[^@\n]*)(?=@)")


def _encodable(word: str) -> str:
    """A pattern of ``word`` in which any character may be percent-encoded (SQLAlchemy decodes a
    query's keys: ``?pass%77ord=`` is ``?password=``)."""
    return "".join(f"(?:{c}|%{ord(c.lower()):02x}|%{ord(c.upper()):02x})" for c in word)


# The names of a password: password, passwd, pwd, with libpq's ssl prefix (sslpassword) and the
# environment's PG prefix (PGPASSWORD), in any case.
_NAME = "(?:pg)?(?:ssl)?(?:password|passwd|pwd)"
_ENCODED_NAME = "".join(
    (
        f"(?:{_encodable('pg')})?",
        f"(?:{_encodable('ssl')})?",
        f"(?:{'|'.join(map(_encodable, ('password', 'passwd', 'pwd')))})",
    )
)
# name=... in a URL's query (its key percent-encoded or not), a libpq connection string (also one
# inside a query's value: ?dsn=password%3D...), a command line (PGPASSWORD=...) or an override of
# a dotted key (hydra.job.env_set.PGPASSWORD=...).
_PARAMETER = re.compile(
    rf"(?P<head>(?:(?<=[?&;\s'\".+=])|(?<=%20)|^){_ENCODED_NAME}(?:=|%3d))(?P<secret>[^&;\s'\"]+)",
    re.IGNORECASE,
)
_KEY = re.compile(_NAME, re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URL (userinfo or query) and every ``password=`` masked."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: m.group("head") + (MASK if m.group("secret") else ""), text)
    return _PARAMETER.sub(lambda m: m.group("head") + MASK, text)


def redacted(value: Any) -> Any:
    """A plain container (dicts, lists, scalars) with every string :func:`redact`-ed, and the value
    of every key that names a password (``PGPASSWORD: ...`` in ``hydra.job.env_set``) masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and _KEY.fullmatch(k) and v not in (None, "") else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value

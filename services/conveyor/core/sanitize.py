"""Scrubbing what clients read: error messages must not carry secrets or internal paths.

A task's exception text is written to the job record and returned by the API, so it is cleaned
first: credentials in URLs, `password=...`-style pairs and bearer tokens are masked, the
deployment's own secrets are masked wherever they appear, and file system paths are cut to
their last component. Stack traces never leave the worker's log.
"""

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from conveyor.core.settings import Settings

MASK = "***"
MAX_MESSAGE_LENGTH = 2000

# Credentials run to the last @ before the host: a password may contain @ itself.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s]*@")
# Names may be prefixed (DB_PASSWORD, AWS_SECRET_ACCESS_KEY) and quoted ({"password": ...}).
_SECRET_PAIRS = re.compile(
    r"(?i)(?<![a-z0-9])((?:[a-z0-9]+[_-])*"
    r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|authorization)"
    r"(?:[_-][a-z0-9]+)*[\"']?)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}")
_API_KEYS = re.compile(r"\bcvk_[A-Za-z0-9_-]{20,}")
_PATHS = re.compile(r"(?<![\w:/.])(?:/[\w.@+-]+){2,}")


class Sanitizer:
    """Masks secrets in text; `known` are literal values that must never be shown."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole; short values
        # would mask ordinary words, so they are left to the patterns.
        self._known = sorted({s for s in known if len(s) >= 6}, key=len, reverse=True)

    @classmethod
    def for_settings(cls, settings: Settings) -> "Sanitizer":
        """A sanitizer that also masks this deployment's configured secrets."""
        secrets = [
            settings.webhook.signing_secret,
            settings.redis_password,
            settings.redis_sentinel.password,
            settings.smtp.password,
        ]
        candidates = [secret.get_secret_value() for secret in secrets if secret is not None]
        # A password inside CONVEYOR_REDIS_URL (redis://:pw@host) is a secret too, in its
        # written and in its percent-decoded form.
        url_password = urlsplit(settings.redis_url.get_secret_value()).password
        if url_password:
            candidates += [url_password, unquote(url_password)]
        return cls(candidates)

    def text(self, message: str) -> str:
        """`message` with secrets masked and paths shortened, at most 2000 characters."""
        for secret in self._known:
            message = message.replace(secret, MASK)
        message = _URL_CREDENTIALS.sub(lambda m: m.group(1) + MASK + "@", message)
        message = _BEARER.sub(lambda m: m.group(1) + " " + MASK, message)
        message = _SECRET_PAIRS.sub(lambda m: m.group(1) + m.group(2) + MASK, message)
        message = _API_KEYS.sub(MASK, message)
        message = _PATHS.sub(lambda m: ".../" + m.group(0).rsplit("/", 1)[1], message)
        return message[:MAX_MESSAGE_LENGTH]

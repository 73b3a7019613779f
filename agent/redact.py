"""Scrub known secrets out of text before it leaves the agent.

Job logs are stored by the control plane and shown to whoever looks at the
job, and restic (or a hook) may echo a password or a credential-bearing URL
in an error message. Every log line the agent emits goes through one
:class:`Redactor` that knows every secret the agent holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from agent import protocol

MASK = "***"
MIN_SECRET_LEN = 4
MAX_LINE_BYTES = 64 * 1024


class Redactor:
    def __init__(
        self, secrets: Iterable[str | None] = (), *, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._max_line_bytes = max_line_bytes
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Remember more secrets; a secret once known is never forgotten.

        Values shorter than MIN_SECRET_LEN are ignored: masking every "a" or
        "12" would make logs unreadable and protect nothing.
        """
        changed = False
        for secret in secrets:
            for variant in _variants(secret):
                if variant not in self._secrets:
                    self._secrets.add(variant)
                    changed = True
        if changed:
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(self._secrets, key=lambda s: (-len(s), s))
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def add_credentials(self, creds: protocol.RepoCredentials | None) -> None:
        if creds is None:
            return
        self.add(*credential_secrets(creds))

    def with_credentials(self, creds: protocol.RepoCredentials) -> Redactor:
        """A copy that also knows ``creds``' secrets; this one is left unchanged.

        For credentials that live only as long as one job (the admin slot):
        the job's log is scrubbed of them, and when the job ends the copy
        goes with it instead of keeping the secret for the agent's lifetime.
        """
        copy = Redactor(max_line_bytes=self._max_line_bytes)
        copy._secrets = set(self._secrets)
        copy.add(*credential_secrets(creds))
        if copy._pattern is None and self._pattern is not None:
            copy._pattern = self._pattern
        return copy

    def redact(self, text: str) -> str:
        if self._pattern is not None and text:
            text = self._pattern.sub(MASK, text)
        return text

    def line(self, text: str) -> str:
        """Redact, then cap the line so one runaway line cannot blow up a frame."""
        return truncate(self.redact(text), self._max_line_bytes)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and text in self._secrets

    def __repr__(self) -> str:
        return f"Redactor(<{len(self._secrets)} secrets>)"


def credential_secrets(creds: protocol.RepoCredentials) -> list[str]:
    """Every secret string a repository credential carries."""
    out = [creds.password]
    if creds.backend_password:
        out.append(creds.backend_password)
    out.extend(v for v in creds.env.values() if v)
    # A REST or S3 URL may carry its password inline (user:pass@host).
    out.extend(url_secrets(creds.url))
    return out


def url_secrets(url: str) -> list[str]:
    # restic URLs look like "rest:https://user:pw@host/"; strip the backend
    # prefix so urlsplit sees the real scheme and netloc.
    found: list[str] = []
    candidates = [url]
    if ":" in url:
        candidates.append(url.split(":", 1)[1])
    for candidate in candidates:
        try:
            parts = urlsplit(candidate)
            password = parts.password
        except ValueError:
            continue
        if password:
            found.append(password)
            found.append(unquote(password))
    return found


def _variants(secret: str | None) -> list[str]:
    if not secret or len(secret) < MIN_SECRET_LEN:
        return []
    variants = {secret}
    # The same secret may appear percent-encoded (inside a URL) or
    # JSON-escaped (inside a raw JSON line restic printed).
    variants.add(quote(secret, safe=""))
    variants.add(quote(secret))
    variants.add(json.dumps(secret)[1:-1])
    variants.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    return [v for v in variants if len(v) >= MIN_SECRET_LEN]


def truncate(text: str, max_bytes: int = MAX_LINE_BYTES) -> str:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return text
    # errors="ignore" drops a multi-byte character cut in half at the end.
    head = data[:max_bytes].decode("utf-8", errors="ignore")
    return f"{head} … [line truncated: {len(data) - max_bytes} more bytes]"

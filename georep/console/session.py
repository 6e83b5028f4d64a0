"""The console's sign-in: a session cookie that proves the API token was given, and the CSRF token of its forms.

Nothing is stored on the server: the cookie is `expiry.nonce.mac`, signed with a key derived from the API
token, so every georep API process with the same token accepts it (a change posted to one that does not lead
is sent on to the leader), and changing the token signs everyone out. The token itself never leaves the
sign-in request. The cookie has no Max-Age (it ends with the browser session), is HttpOnly and SameSite=Strict;
every form also carries a CSRF token bound to the session's nonce, checked on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr

COOKIE: Final = "georep_console"
#: a session lasts at most this long, browser open or not
LIFETIME_S: Final = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    expires: int
    #: put in every form of this session, checked on every POST
    csrf: str


class Sessions:
    def __init__(self, token: SecretStr | None, clock: Callable[[], float] = time.time) -> None:
        secret = token.get_secret_value() if token else ""
        self._token = secret.encode() if secret else None
        self._key = hmac.new(self._token, b"georep console session", hashlib.sha256).digest() if self._token else None
        self._now = clock

    @property
    def enabled(self) -> bool:
        """Whether changes can be signed in for at all: the API has a token."""
        return self._key is not None

    def token_ok(self, presented: str) -> bool:
        return self._token is not None and hmac.compare_digest(presented.strip().encode(), self._token)

    def new(self) -> tuple[str, Session]:
        """(cookie value, session) for someone who just gave the right token."""
        assert self._key is not None
        nonce = secrets.token_urlsafe(18)
        expires = int(self._now()) + LIFETIME_S
        return f"{expires}.{nonce}.{self._mac(f'{expires}.{nonce}')}", self._session(nonce, expires)

    def read(self, cookie: str | None) -> Session | None:
        """The session `cookie` proves, or None (absent, forged, expired, or signed with another token)."""
        if self._key is None or not cookie or cookie.count(".") != 2:
            return None
        expires, nonce, mac = cookie.split(".")
        if not expires.isdigit() or not hmac.compare_digest(mac, self._mac(f"{expires}.{nonce}")):
            return None
        if int(expires) < self._now():
            return None
        return self._session(nonce, int(expires))

    def _session(self, nonce: str, expires: int) -> Session:
        return Session(nonce, expires, self._mac(f"csrf.{nonce}"))

    def _mac(self, text: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

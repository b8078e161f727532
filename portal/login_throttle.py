"""Failed logins, counted per account and per client address, so passwords cannot be guessed at speed.

Every way in counts the same failures: the portal's login form, the admin's and the API's token endpoint.
Past ``VOYAGER_LOGIN_MAX_FAILURES`` failures for one account (from any address), or
``VOYAGER_LOGIN_MAX_FAILURES_PER_ADDRESS`` from one address (on any accounts), within
``VOYAGER_LOGIN_WINDOW`` seconds of the first, logins are refused, the right password too, until the
window ends. A success forgives only the failures that address made on that account: the count of
another address, guessing the same password, stays.

Counts live in the cache (Redis when ``REDIS_URL`` is set, so every process shares them; this process's
memory otherwise), under hashed keys: neither names nor addresses are stored in the clear.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

PREFIX = "voyager:login-failures"


class LoginThrottled(Exception):
    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def client_address(request) -> str:
    """The address failures are counted against: an IPv6 client's /64, which one household holds whole."""
    raw = request.META.get("REMOTE_ADDR") or ""  # set from the proxy's X-Forwarded-For by daphne --proxy-headers
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw
    if address.version == 6:
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _key(*parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
    return f"{PREFIX}:{parts[0]}:{digest}"


def _window() -> int:
    return settings.VOYAGER_LOGIN_WINDOW


class _Counter:
    """A count that expires ``window`` seconds after its first increment, with the time it ends."""

    def __init__(self, key: str):
        self.key, self.ends = key, f"{key}:ends"

    def value(self) -> int:
        return cache.get(self.key, 0)

    def add(self, n: int = 1) -> None:
        window = _window()
        if cache.add(self.key, 0, timeout=window):
            cache.set(self.ends, time.time() + window, timeout=window)
        try:
            cache.incr(self.key, n)
        except ValueError:  # expired between add and incr: start again
            cache.set(self.key, n, timeout=window)
            cache.set(self.ends, time.time() + window, timeout=window)

    def subtract(self, n: int) -> None:
        if n <= 0:
            return
        try:
            if cache.decr(self.key, n) <= 0:
                cache.delete_many([self.key, self.ends])
        except ValueError:  # already expired
            pass

    def seconds_left(self) -> int:
        ends = cache.get(self.ends)
        return max(1, math.ceil(ends - time.time())) if ends else _window()


@dataclass
class LoginAttempt:
    """One login try: ``check()`` before the password is looked at, then ``failed()`` or ``succeeded()``."""

    username: str
    address: str

    def __post_init__(self):
        name = self.username.strip().lower()
        self.account = _Counter(_key("account", name))
        self.from_address = _Counter(_key("address", self.address))
        self.pair = _Counter(_key("pair", name, self.address))

    def check(self) -> None:
        if self.account.value() >= settings.VOYAGER_LOGIN_MAX_FAILURES:
            raise LoginThrottled(self._message("for this account", self.account), self.account.seconds_left())
        if self.from_address.value() >= settings.VOYAGER_LOGIN_MAX_FAILURES_PER_ADDRESS:
            wait = self.from_address.seconds_left()
            raise LoginThrottled(self._message("from your network address", self.from_address), wait)

    def failed(self) -> None:
        for counter in (self.account, self.from_address, self.pair):
            counter.add()

    def succeeded(self) -> None:
        forgiven = self.pair.value()
        cache.delete_many([self.pair.key, self.pair.ends])
        self.account.subtract(forgiven)
        self.from_address.subtract(forgiven)

    @staticmethod
    def _message(where: str, counter: _Counter) -> str:
        minutes = math.ceil(counter.seconds_left() / 60)
        return f"Too many failed logins {where}. Try again in {minutes} minute{'s' if minutes != 1 else ''}."

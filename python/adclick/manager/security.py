"""Passwords (argon2), API tokens (stored as SHA-256), CSRF tokens and the login rate limit."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from adclick.core import networks

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
API_TOKEN_PREFIX = "adc_"
_hasher = PasswordHasher()
# Verified against when the email is unknown, so a wrong email costs as long as a wrong password. Made at the first
# such sign-in, at the cost in force: every process that imports this module does not pay for a hash at import.
_dummy_hash: str | None = None


def configure_passwords(time_cost: int, memory_kib: int) -> None:
    """The argon2id cost of new hashes (ADCLICK_MANAGER_PASSWORD_*). A stored hash of another cost still verifies
    and is rehashed at the next sign-in, as argon2-cffi's `check_needs_rehash` says."""
    global _hasher, _dummy_hash
    if (_hasher.time_cost, _hasher.memory_cost) != (time_cost, memory_kib):
        _hasher, _dummy_hash = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib), None


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if `password` matches; always spends one argon2 verification, even for an unknown user."""
    try:
        return _hasher.verify(password_hash or _dummy(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def check_new_password(password: str) -> str:
    """The password, or ValueError saying why it is refused."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise ValueError("a password may have at most 1024 characters")
    return password


def password_stamp(password_hash: str) -> str:
    """A short digest of the hash kept in the session, so changing a password ends the sessions made before."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    """SHA-256 is enough for 256-bit random tokens (nothing to brute-force); it also makes lookup an index seek."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(expected: str | None, sent: str | None) -> bool:
    return bool(expected) and bool(sent) and hmac.compare_digest(str(expected).encode(), str(sent).encode())


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: int) -> str:
    """The client address (adclick.core.networks.client_ip), "unknown" when there is none."""
    return networks.client_ip(peer, forwarded_for, trusted_proxies) or "unknown"


class LoginLimiter:
    """Fixed one-minute windows of sign-in attempts per (IP, email) and per IP, shared through Redis.

    When Redis fails the limit still holds, counted in this process only, so an outage never opens the door.
    """

    WINDOW_SECONDS = 60
    IP_FACTOR = 10

    def __init__(self, redis_client: redis.Redis | None, per_minute: int) -> None:
        self.redis = redis_client
        self.per_minute = per_minute
        self._local: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(ip: str, email: str) -> tuple[str, str]:
        pair = hashlib.sha256(f"{ip}\n{email.strip().lower()}".encode()).hexdigest()[:32]
        only_ip = hashlib.sha256(ip.encode()).hexdigest()[:32]
        return f"adclick:manager:login:{pair}", f"adclick:manager:login-ip:{only_ip}"

    def hit(self, ip: str, email: str) -> float | None:
        """Count one attempt; None if allowed, else the seconds until the window ends (for Retry-After)."""
        pair_key, ip_key = self._keys(ip, email)
        counts: list[tuple[int, float]]
        try:
            if self.redis is None:
                raise redis.ConnectionError("no Redis")
            with self.redis.pipeline(transaction=True) as pipe:
                for key in (pair_key, ip_key):
                    # SET NX EX then INCR, not EXPIRE NX: that needs Redis 7 and we support 6.2.
                    pipe.set(key, 0, ex=self.WINDOW_SECONDS, nx=True)
                    pipe.incr(key)
                    pipe.ttl(key)
                replies = pipe.execute()
            counts = [(int(replies[1]), float(replies[2])), (int(replies[4]), float(replies[5]))]
        except redis.RedisError as error:
            log.warning("login rate limit counted in-process: Redis failed: %s", error)
            counts = [self._local_hit(pair_key), self._local_hit(ip_key)]
        limits = (self.per_minute, self.per_minute * self.IP_FACTOR)
        for (count, ttl), limit in zip(counts, limits, strict=True):
            if count > limit:
                return max(ttl, 1.0)
        return None

    def _local_hit(self, key: str) -> tuple[int, float]:
        now = time.monotonic()
        with self._lock:
            if len(self._local) > 100_000:  # a flood of distinct keys must not grow memory without bound
                self._local = {k: v for k, v in self._local.items() if v[1] > now}
            count, ends = self._local.get(key, (0, now + self.WINDOW_SECONDS))
            if ends <= now:
                count, ends = 0, now + self.WINDOW_SECONDS
            self._local[key] = (count + 1, ends)
            return count + 1, ends - now

    def reset(self, ip: str, email: str) -> None:
        """A successful sign-in clears its (IP, email) window."""
        pair_key, _ = self._keys(ip, email)
        self._local.pop(pair_key, None)
        try:
            if self.redis is not None:
                self.redis.delete(pair_key)
        except redis.RedisError:
            pass

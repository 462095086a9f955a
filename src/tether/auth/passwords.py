"""Password hashing with Argon2id (argon2-cffi).

Argon2id is the winner of the Password Hashing Competition and the first
choice of the OWASP Password Storage Cheat Sheet. argon2-cffi's defaults
(RFC 9106's second recommended option: 3 passes over 64 MiB, 4 lanes) cost
tens of milliseconds per hash; tests pass a cheaper :class:`PasswordHasher`.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["PasswordHasher", "fast_hasher", "hash_password", "needs_rehash", "verify_password"]

_DEFAULT = PasswordHasher()


def fast_hasher() -> PasswordHasher:
    """A cheap Argon2id hasher (1 pass over 8 MiB) for tests only; never for real users."""
    return PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """Hash a password: the PHC string (``$argon2id$v=19$m=...``) with its random salt.

    Raises:
        ValueError: the password is empty.
    """
    if not password:
        raise ValueError("a password must not be empty")
    return (hasher or _DEFAULT).hash(password)


def verify_password(stored: str, password: str, hasher: PasswordHasher | None = None) -> bool:
    """True when ``password`` matches the PHC string ``stored`` (constant time in argon2).

    A malformed ``stored`` string counts as no match.
    """
    try:
        return (hasher or _DEFAULT).verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str, hasher: PasswordHasher | None = None) -> bool:
    """True when ``stored`` was made with other parameters than ``hasher``'s."""
    try:
        return (hasher or _DEFAULT).check_needs_rehash(stored)
    except InvalidHashError:
        return True

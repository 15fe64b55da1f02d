"""Password hashes for the HTTP users: salted and slow (stdlib scrypt).

A config holds ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64), made by
``ser2tcp --hash-password``.  The newer original ser2tcp's
``sha256:<salt>:<hex digest>`` is accepted too, with a warning: one SHA-256
round is fast to brute-force.  A plain-text password is refused by the
config.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

#: scrypt cost: 2**14 x 8 x 1 is ~16 MiB and ~50 ms here, the usual choice.
N, R, P = 1 << 14, 8, 1
SALT_BYTES = 16
PREFIXES = ("scrypt$", "sha256:")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=64 << 20)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def check_format(stored: str) -> str | None:
    """Why ``stored`` is not a hash this module can check, or None."""
    if stored.startswith("scrypt$"):
        parts = stored.split("$")
        if len(parts) != 6:
            return "a scrypt hash has 6 fields separated by $"
        try:
            n, r, p = (int(x) for x in parts[1:4])
            base64.b64decode(parts[4], validate=True)
            base64.b64decode(parts[5], validate=True)
        except ValueError:
            return "a scrypt hash has numbers and base64 fields"
        if n < 2 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or n * r > 1 << 22:
            return "scrypt parameters out of range"
        return None
    if stored.startswith("sha256:"):
        parts = stored.split(":")
        if len(parts) != 3 or len(parts[2]) != 64:
            return "a sha256 hash is sha256:<salt>:<64 hex digits>"
        try:
            bytes.fromhex(parts[2])
        except ValueError:
            return "a sha256 hash is sha256:<salt>:<64 hex digits>"
        return None
    return "not a password hash: make one with ser2tcp --hash-password (plain text is refused)"


def is_weak(stored: str) -> bool:
    return stored.startswith("sha256:")


def verify(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (a hash check_format accepts)."""
    if stored.startswith("sha256:"):
        _, salt, digest = stored.split(":")
        mine = hashlib.sha256((salt + password).encode()).hexdigest()
        return hmac.compare_digest(mine, digest.lower())
    _, n, r, p, salt, digest = stored.split("$")
    computed = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), maxmem=64 << 20
    )
    return hmac.compare_digest(computed, base64.b64decode(digest))


#: Checked against unknown logins, so that a wrong login takes as long as a
#: wrong password.
DUMMY = hash_password("", salt=b"\0" * SALT_BYTES)

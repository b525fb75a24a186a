"""The shared enroll secret every osquery node presents to enroll.

It comes from QUARRY_ENROLL_SECRET when set, otherwise from a file (by default
`state_dir/enroll_secret`) that osquery's --enroll_secret_path can point at too.
The file is re-read for every enrollment call (once per group a gateway sends), so
rotating it needs no restart.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from quarry.settings import Settings


def secret_file(settings: Settings) -> Path:
    """Where the shared secret is kept when it is not given in the environment."""
    if settings.enroll_secret_file:
        return Path(settings.enroll_secret_file)
    return settings.path("enroll_secret")


def ensure_secret_file(settings: Settings) -> Path:
    """Create the secret file with a random secret (mode 0600) unless one is configured."""
    path = secret_file(settings)
    if settings.enroll_secret or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once must not overwrite each other's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return path


def current_secret(settings: Settings) -> str:
    """The secret in force now; empty when none is configured or the file is unreadable."""
    if settings.enroll_secret:
        return settings.enroll_secret
    try:
        # osquery trims the file it sends, so we trim ours the same way.
        return secret_file(settings).read_text().strip()
    except OSError:
        return ""


def secret_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison; an empty expected secret never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())

"""The demo-mode secret: made once, kept in the instance folder, trusted only if private.

The secret is created with O_EXCL so that workers starting together agree on one (and
gunicorn's master makes it before any worker starts). Whoever can write that file, or
replace it through its folder, can mint any token: a secret file or folder that another
user owns or that group/others may write is refused with a `SettingsError` naming
`WSAPP_INSTANCE_PATH` (start-up stops with one line), never trusted. A symbolic link in
place of the file is refused too.

No Flask here: gunicorn.conf.py imports this in the master, before the gevent worker
monkey-patches.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from pathlib import Path

from .settings import Settings, SettingsError

SECRET_FILE = "demo-jwt-secret"
ROOT = Path(__file__).resolve().parent.parent


def instance_folder(settings: Settings) -> str:
    """`WSAPP_INSTANCE_PATH`, or the checkout's `instance/` (Flask's instance folder)."""
    return settings.instance_path or str(ROOT / "instance")


def _refuse(folder: str, why: str) -> SettingsError:
    return SettingsError([f"WSAPP_INSTANCE_PATH={folder!r}: {why}; the demo secret there cannot be trusted"])


def _check_private(st: os.stat_result, what: str, folder: str) -> None:
    """Refuse a demo-secret file or folder that another user owns or may write."""
    if st.st_uid != os.geteuid():
        raise _refuse(folder, f"{what} belongs to another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        raise _refuse(folder, f"{what} is writable by group or others (mode {mode:04o}); chmod go-w it")


def load_or_create_secret(folder: str) -> str:
    """The demo secret kept in `folder`, made on first use; `SettingsError` if untrustworthy."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _check_private(os.stat(folder), "the folder", folder)
    path = os.path.join(folder, SECRET_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_secret(path, folder)
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret)
    return secret


def _read_secret(path: str, folder: str) -> str:
    for _ in range(50):  # another worker may be writing it right now
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse(folder, f"{SECRET_FILE} is a symbolic link") from None
            raise
        with os.fdopen(fd, encoding="ascii") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(folder, f"{SECRET_FILE} is not a regular file")
            _check_private(st, SECRET_FILE, folder)
            secret = f.read().strip()
        if secret:
            return secret
        time.sleep(0.02)
    raise SettingsError([f"WSAPP_INSTANCE_PATH={folder!r}: {path} is empty; delete it to make a new demo secret"])

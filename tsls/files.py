"""Files private to their owner: the data directory is 0700, every file tsls writes is 0600.

The databases hold the administrator's secret, the token-signing secret, every registered terminal
server's secret and the Clearinghouse certificate; a device store holds license tokens. Like OpenSSH
with an unprotected key, tsls refuses to start on a data directory or database that other users can
read or write, and says how to fix it (``PERMISSIONS_TOO_OPEN``).
"""
from __future__ import annotations

import os
import stat

from tsls.errors import Code

PRIVATE_UMASK = 0o077
DATA_ENV = "TSLS_DATA"


def default_data_dir() -> str:
    """The data directory every command defaults to: $TSLS_DATA, else ./tsls-data. The daemons keep their
    databases and credentials there, tsls-admin reads the credentials, tsls-ts keeps its devices' licenses."""
    return os.environ.get(DATA_ENV) or "tsls-data"


class ExposedError(Exception):
    """A data directory or file that other users can reach. ``code`` is PERMISSIONS_TOO_OPEN."""

    code = Code.PERMISSIONS_TOO_OPEN


def private_umask() -> int:
    """Make every file and directory this process creates from now on private to its owner.
    Returns the previous umask. The daemons and the command-line clients call it first thing."""
    return os.umask(PRIVATE_UMASK)


def private_directory(path: str) -> str:
    """Create ``path`` (and its missing parents) mode 0700, or check that an existing one is private."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        check_private(path)
    return path


def check_private(*paths: str) -> None:
    """Refuse (ExposedError) if any of ``paths`` that exists belongs to another user or lets
    group or others read, write or enter it. Missing paths are fine."""
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        wanted = "700" if is_dir else "600"
        if st.st_uid != os.geteuid():
            raise ExposedError(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); "
                               f"it holds secrets: run tsls as its owner, or `chown` it to this user "
                               f"and `chmod {wanted}` it")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            what = "directory" if is_dir else "file"
            raise ExposedError(f"the {what} {path} is mode {mode:04o}: other users can reach the secrets it holds; "
                               f"run `chmod {wanted} {path}` and start again")


def create_private(path: str) -> bool:
    """Create ``path`` empty and mode 0600 if it does not exist; True if this call created it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def write_private(path: str, data: str | bytes, newline: bool = False) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 (a reader sees the old file or the new one)."""
    if isinstance(data, str):
        data = (data + "\n" if newline else data).encode()
    tmp = f"{path}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)        # an old .new left by a crash keeps its mode otherwise
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.replace(tmp, path)

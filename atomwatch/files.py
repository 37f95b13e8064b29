"""Reading the files an operator hands atomwatch (keys, certificates, token files).

What lives here: :func:`read_file`, the bytes of a file or an error naming the option, the file
and what is wrong with it (missing, a directory, unreadable), and :func:`check_private`, which
refuses a file holding secrets that group or others may read or write. Both raise
:class:`~atomwatch.config.ConfigError` or the subclass the caller names, so a command stops with
one clear line. What does not: parsing what is inside (PEM keys in :mod:`atomwatch.signing`,
certificates in :mod:`atomwatch.config`, tokens in :mod:`atomwatch.apitokens`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import ConfigError


def read_file(path: str | Path, what: str, error: type[ConfigError] = ConfigError) -> bytes:
    """The bytes of ``path``; ``error("WHAT PATH: why")`` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{what} {path}: is a directory, not a file") from None
    except PermissionError:
        raise error(f"{what} {path}: cannot be read by this user (permission denied)") from None
    except OSError as e:
        raise error(f"{what} {path}: cannot be read ({e.strerror})") from None


def check_private(path: str | Path, what: str, error: type[ConfigError] = ConfigError) -> os.stat_result:
    """The stat of a file that holds secrets; ``error`` when it is missing, not a regular file, or
    readable or writable by group or others (with the ``chmod 600`` that mends it)."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except OSError as e:
        raise error(f"{what} {path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path}: not a regular file")
    if st.st_mode & 0o077:
        raise error(
            f"{what} {path}: readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"it holds secrets and must be 0600: chmod 600 {path}"
        )
    return st

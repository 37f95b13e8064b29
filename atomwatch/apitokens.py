"""Bearer tokens of the controller's HTTP API: the tokens file, the local default, the client's token.

The tokens file holds one token per line, ``NAME TOKEN`` separated by white space; ``#`` starts a
comment, blank lines are ignored. NAME (``[A-Za-z0-9_.@-]{1,64}``) is who the token speaks for:
it becomes the actor of that token's verdicts in the audit trail. A TOKEN has at least 32
characters. A name may appear on several lines (rotation: the new token is added, handed out,
then the old line removed); a token may not appear twice. The file must not be readable or
writable by group or others (``chmod 600``).

With no tokens file configured, the controller uses a local one for the user running it,
``$XDG_STATE_HOME/atomwatch/api-tokens`` (``~/.local/state/atomwatch/api-tokens``, directory 0700,
file 0600), created on first start with one token named after the user; the operator's commands
read the same file by default, so one user's ``atomwatch up`` and ``atomwatch verdict`` work with
nothing configured while another local user cannot give a verdict.

This module is core: the controller checks tokens with it, the command line reads its token with it.
"""

from __future__ import annotations

import getpass
import hmac
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from . import files
from .config import ConfigError

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_TOKEN = 32
ENV_TOKEN = "ATOMWATCH_API_TOKEN"


def default_tokens_path() -> Path:
    """``$XDG_STATE_HOME/atomwatch/api-tokens`` (default ``~/.local/state/atomwatch/api-tokens``)."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "atomwatch" / "api-tokens"


def check_private(path: Path, what: str = "--http-tokens") -> os.stat_result:
    """The file's stat; ConfigError when it is missing, not a regular file, or open to group/others."""
    return files.check_private(path, what)


def parse_tokens(text: str, path: Path | str) -> list[tuple[str, str]]:
    """The (name, token) pairs of a tokens file's text; ConfigError naming file and line."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ConfigError(f"{path}:{n}: expected 'NAME TOKEN', got {len(fields)} field(s)")
        name, token = fields
        if not NAME.match(name):
            raise ConfigError(f"{path}:{n}: name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
        if len(token) < MIN_TOKEN:
            raise ConfigError(f"{path}:{n}: the token of {name!r} is {len(token)} characters, at least {MIN_TOKEN}")
        if token in seen:
            raise ConfigError(f"{path}:{n}: this token is already on an earlier line")
        seen.add(token)
        out.append((name, token))
    return out


def read_tokens(path: Path | str, what: str = "--http-tokens") -> list[tuple[str, str]]:
    p = Path(path)
    check_private(p, what)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {p}: cannot read it ({e})") from None
    return parse_tokens(text, p)


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 43 characters, 256 bits


def local_user_name() -> str:
    """The local user's name as a token name (characters outside the name alphabet become ``_``)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "operator"
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", user)[:64] or "operator"


def ensure_local_tokens(path: Path | None = None) -> Path:
    """The local tokens file, created (directory 0700, file 0600, one token named after the
    user) when it does not exist; an existing one is checked and reused."""
    path = path or default_tokens_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.parent.stat().st_uid == os.getuid():
            os.chmod(path.parent, 0o700)
    except OSError as e:
        raise ConfigError(f"cannot create the API tokens directory {path.parent} ({e.strerror})") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        read_tokens(path, "the local API tokens file")
        return path
    except OSError as e:
        raise ConfigError(f"cannot create the API tokens file {path} ({e.strerror})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(
            "# atomwatch HTTP API tokens: NAME TOKEN per line (see docs/security.md).\n"
            "# Created for the local user; atomwatch alarms/alarm/verdict read it by default.\n"
            f"{local_user_name()} {new_token()}\n"
        )
    log.info("created the local API tokens file %s", path)
    return path


@dataclass(frozen=True)
class _Loaded:
    key: tuple[int, int, int]
    tokens: tuple[tuple[str, bytes], ...]


class TokenFile:
    """The tokens of a file, re-read when the file changes (a stat per check: mtime, size, inode).

    A file that becomes unusable (malformed, opened to others, removed) makes every check fail
    (closed, not open) until it is fixed; the error is logged once per change."""

    def __init__(self, path: Path | str, what: str = "--http-tokens"):
        self.path = Path(path)
        self.what = what
        self._lock = threading.Lock()
        self._loaded = self._load()  # the first load raises ConfigError: a bad file stops the start
        self._error: str | None = None

    def _key(self, st: os.stat_result) -> tuple[int, int, int]:
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> _Loaded:
        st = check_private(self.path, self.what)
        pairs = read_tokens(self.path, self.what)
        if not pairs:
            raise ConfigError(f"{self.what} {self.path}: holds no token")
        return _Loaded(self._key(st), tuple((name, token.encode()) for name, token in pairs))

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._loaded.tokens})

    def _current(self) -> _Loaded | None:
        with self._lock:
            try:
                key = self._key(self.path.stat())
            except OSError:
                key = None
            if key is not None and key == self._loaded.key:
                return self._loaded if self._error is None else None
            try:
                loaded = self._load()
            except ConfigError as e:
                if self._error != str(e):
                    log.error("API tokens file unusable, every request is refused until it is fixed: %s", e)
                self._error = str(e)
                self._loaded = _Loaded(key or (-1, -1, -1), ())
                return None
            self._loaded = loaded
            if self._error is not None:
                log.warning("API tokens file %s usable again (%d tokens)", self.path, len(loaded.tokens))
            else:
                log.info("API tokens file %s changed: re-read (%d tokens)", self.path, len(loaded.tokens))
            self._error = None
            return loaded

    @property
    def usable(self) -> bool:
        return self._current() is not None

    def check(self, token: str | None) -> str | None:
        """The name of ``token`` (compared in constant time with every token), or None."""
        loaded = self._current()
        if loaded is None or not token:
            return None
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for name, expected in loaded.tokens:  # no early exit: every token is compared
            if hmac.compare_digest(given, expected) and found is None:
                found = name
        return found


def client_token(token_file: str | None = None) -> tuple[str | None, str]:
    """The operator's token and where it came from: ``$ATOMWATCH_API_TOKEN``, else ``token_file``
    (a file holding just the token), else the local tokens file's first token; (None, why) when
    there is none."""
    env = os.environ.get(ENV_TOKEN, "").strip()
    if env:
        return env, f"${ENV_TOKEN}"
    if token_file:
        p = Path(token_file)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"--token-file {p}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file {p}: cannot read it ({e})") from None
        lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln]
        if len(lines) != 1 or len(lines[0].split()) != 1:
            raise ConfigError(f"--token-file {p}: expected just the token on one line")
        try:
            if p.stat().st_mode & 0o077:
                log.warning("--token-file %s is readable by group or others: chmod 600 %s", p, p)
        except OSError:
            pass
        return lines[0], f"--token-file {p}"
    local = default_tokens_path()
    if not local.exists():
        return None, f"no ${ENV_TOKEN}, no --token-file, no {local}"
    pairs = read_tokens(local, "the local API tokens file")
    if not pairs:
        return None, f"{local} holds no token"
    return pairs[0][1], f"{local} ({pairs[0][0]})"

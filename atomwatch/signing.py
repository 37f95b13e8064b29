"""Signed commands: the controller signs every command with Ed25519, agents verify before running it.

What lives here: loading the command-signing keys from PEM files (:func:`load_private_key`,
:func:`load_public_keys`), the canonical bytes a signature covers (:func:`canonical_bytes`), the
controller's :class:`Signer` and the agent's :class:`Verifier` (signature, addressee, expiry,
clock skew, replay cache). What does not: the MQTT session (the agent and controller runtimes),
and what a command does (its handler).

Canonical bytes: the command's JSON payload as an object, without its ``sig`` field, serialised
with ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` and encoded as UTF-8. The agent rebuilds them from the object it parsed, so
every field present in the payload except ``sig`` is covered, unknown ones included. Signed
fields: ``v``, ``type`` (``"cmd"``), ``id`` (request id), ``command``, ``params``, ``ts`` (issue
time, s since the epoch), ``timeout``, ``site``, ``host`` (the addressee), ``expires`` (s since
the epoch), ``nonce`` (32 hex digits from :func:`secrets.token_hex`) and ``kid`` (the key id:
the first 16 hex digits of SHA-256 over the raw 32-byte public key). ``sig`` is the 64-byte
Ed25519 signature, base64 (standard alphabet, padded).

Key files (``atomwatch secure init DIR`` writes them): ``DIR/controller/command-signing.key``
(PKCS#8 PEM, unencrypted, mode 0600) for the controller, ``DIR/agents/<host>/command-signing.pub``
(SubjectPublicKeyInfo PEM) for each agent. See docs/security.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import protocol
from .config import ConfigError
from .files import check_private, read_file

#: the file names of the documented layout under ``atomwatch secure init DIR``
CONTROLLER_KEY_FILE = "controller/command-signing.key"
AGENT_KEY_FILE = "agents/{host}/command-signing.pub"

#: how long a command may wait to be accepted, and the clock difference allowed between hosts
DEFAULT_LIFETIME = 60.0
DEFAULT_SKEW = 30.0
#: (request id, nonce) pairs kept to refuse replays; more than this many valid commands within
#: one lifetime + skew and new ones are refused rather than a replay let through
DEFAULT_REPLAY_CACHE = 100_000

#: the fields a signed command must carry besides those of every command
SIGNED_FIELDS = ("site", "host", "expires", "nonce", "kid", "sig")


class KeyFileError(ConfigError):
    """A key file that cannot be used; the text names the file and what is wrong."""


class Refused(Exception):
    """A command the agent will not run. ``reason`` is a short counter name (``unsigned``,
    ``bad-signature``, ``wrong-addressee``, ``expired``, ``future``, ``replayed``, ``no-key``…)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- keys


def generate_key_pair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_key_pair(private_path: str | Path, public_path: str | Path) -> Ed25519PrivateKey:
    """Generate a pair; write the private key (mode 0600) and the public key (0644)."""
    key, pub = generate_key_pair()
    private_path, public_path = Path(private_path), Path(public_path)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))
    os.chmod(private_path, 0o600)
    public_path.write_bytes(public_key_pem(pub))
    return key


def _read(path: Path, what: str) -> bytes:
    return read_file(path, what, KeyFileError)


def _kind(key: Any) -> str:
    name = type(key).__name__.lstrip("_")
    for prefix in ("RSA", "EC", "DSA", "DH", "Ed448", "X25519", "X448"):
        if name.startswith(prefix):
            return f"{'a' if prefix in ('DSA', 'DH') else 'an'} {prefix} key"
    return f"a key of type {name}"


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The controller's command-signing key: an unencrypted PKCS#8 PEM Ed25519 key that only its
    owner may read (a group- or world-readable file is refused)."""
    path = Path(path)
    what = "command-signing key"
    data = _read(path, what)
    check_private(path, what, KeyFileError)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{what} {path}: the key is encrypted; give an unencrypted PKCS#8 key") from None
    except (ValueError, binascii.Error) as e:
        raise KeyFileError(f"{what} {path}: not a PEM private key ({e})") from None
    except Exception as e:  # cryptography's UnsupportedAlgorithm and the like
        raise KeyFileError(f"{what} {path}: cannot be loaded ({type(e).__name__}: {e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{what} {path}: {_kind(key)}, expected an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """One controller public key: a SubjectPublicKeyInfo PEM Ed25519 key."""
    path = Path(path)
    what = "controller public key"
    data = _read(path, what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error) as e:
        raise KeyFileError(f"{what} {path}: not a PEM public key ({e})") from None
    except Exception as e:
        raise KeyFileError(f"{what} {path}: cannot be loaded ({type(e).__name__}: {e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{what} {path}: {_kind(key)}, expected an Ed25519 public key")
    return key


def load_public_keys(paths: str | Path | Iterable[str | Path]) -> list[Ed25519PublicKey]:
    """Every key of ``paths`` (one path, a list, or a string with ``,`` between paths): an agent
    trusts several during a key rotation."""
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p.strip()]
    return [load_public_key(Path(str(p).strip())) for p in paths]


# --------------------------------------------------------------------------- signing


def canonical_bytes(body: dict[str, Any]) -> bytes:
    """The bytes a signature covers: every field of ``body`` but ``sig``, JSON with sorted keys,
    no whitespace, UTF-8."""
    unsigned = {k: v for k, v in body.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class Signer:
    """The controller side: turns a command into a signed one for one site and host."""

    def __init__(self, key: Ed25519PrivateKey, lifetime: float = DEFAULT_LIFETIME):
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"the command-signing key must be an Ed25519PrivateKey, got {type(key).__name__}")
        if not lifetime > 0:
            raise ConfigError(f"command lifetime must be > 0 seconds, got {lifetime}")
        self.key = key
        self.kid = key_id(key.public_key())
        self.lifetime = float(lifetime)

    def sign(self, cmd: protocol.Command, site: str, host: str, now: float | None = None) -> protocol.Command:
        """``cmd`` addressed to ``site``/``host``, dated now (or ``now``), with its nonce,
        expiry, key id and signature set."""
        cmd.ts = time.time() if now is None else float(now)
        cmd.site, cmd.host = site, host
        cmd.expires = cmd.ts + self.lifetime
        cmd.nonce = secrets.token_hex(16)
        cmd.kid = self.kid
        cmd.sig = None
        body = json.loads(protocol.encode(cmd))
        cmd.sig = base64.b64encode(self.key.sign(canonical_bytes(body))).decode("ascii")
        return cmd


class Verifier:
    """The agent side: :meth:`check` raises :class:`Refused` for a command this agent must not run.

    ``keys``: the trusted controller public keys (empty: every command is refused). A command is
    refused if unsigned, badly signed, addressed to another site or host, expired (``expires`` +
    ``skew`` passed), issued more than ``skew`` in the future, valid for longer than
    ``lifetime`` + ``skew``, or already seen (request id, nonce) — the replay cache holds each
    pair until its command could no longer be accepted, at most ``cache_size`` pairs."""

    def __init__(
        self,
        keys: Iterable[Ed25519PublicKey],
        site: str,
        host: str,
        lifetime: float = DEFAULT_LIFETIME,
        skew: float = DEFAULT_SKEW,
        cache_size: int = DEFAULT_REPLAY_CACHE,
    ):
        self.keys = {key_id(k): k for k in keys}
        self.site, self.host = site, host
        self.lifetime, self.skew, self.cache_size = float(lifetime), float(skew), int(cache_size)
        self.seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _purge(self, now: float) -> None:
        # entries are appended in arrival order; their expiry is at most lifetime + 2·skew later,
        # so scanning the whole cache is needed only when full
        expired = [k for k, until in self.seen.items() if until < now]
        for k in expired:
            del self.seen[k]

    def check(self, cmd: protocol.Command, now: float | None = None) -> None:
        now = time.time() if now is None else now
        what = f"{cmd.command} {cmd.id}"
        if not self.keys:
            raise Refused(
                "no-key",
                f"refused: {what}: this agent has no controller public key, so it runs no command; "
                "give one with --controller-key FILE (controller_key in the config file, or ATOMWATCH_CONTROLLER_KEY)",
            )
        if cmd.sig is None:
            raise Refused("unsigned", f"refused: {what}: unsigned command")
        # as received; a command built in this process is checked as it would go on the wire
        raw = cmd.raw if cmd.raw is not None else json.loads(protocol.encode(cmd))
        key = self.keys.get(cmd.kid or "")
        candidates = [key] if key is not None else list(self.keys.values())
        try:
            signature = base64.b64decode(cmd.sig, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("bad-signature", f"refused: {what}: signature is not base64") from None
        data = canonical_bytes(raw)
        for k in candidates:
            try:
                k.verify(signature, data)
                break
            except InvalidSignature:
                continue
        else:
            raise Refused("bad-signature", f"refused: {what}: bad signature (no trusted controller key verifies it)")
        if cmd.site != self.site or cmd.host != self.host:
            raise Refused(
                "wrong-addressee",
                f"refused: {what}: addressed to {cmd.site}/{cmd.host}, this agent is {self.site}/{self.host}",
            )
        if cmd.expires is None or cmd.nonce is None or not cmd.nonce:
            raise Refused("unsigned", f"refused: {what}: signed command without expiry or nonce")
        if cmd.ts > now + self.skew:
            raise Refused(
                "future",
                f"refused: {what}: issued {cmd.ts - now:.0f} s in the future (clock skew allowed: {self.skew:g} s)",
            )
        if cmd.expires + self.skew < now:
            raise Refused("expired", f"refused: {what}: expired {now - cmd.expires:.0f} s ago (skew {self.skew:g} s)")
        if cmd.expires - cmd.ts > self.lifetime + self.skew:
            raise Refused(
                "expired",
                f"refused: {what}: valid for {cmd.expires - cmd.ts:.0f} s, more than this agent's "
                f"{self.lifetime:g} s lifetime",
            )
        pair = (cmd.id, cmd.nonce)
        if pair in self.seen:
            raise Refused("replayed", f"refused: {what}: already seen (replay)")
        if len(self.seen) >= self.cache_size:
            self._purge(now)
            if len(self.seen) >= self.cache_size:
                raise Refused("replay-cache-full", f"refused: {what}: replay cache full ({self.cache_size} commands)")
        self.seen[pair] = cmd.expires + self.skew
        # drop the oldest entries that can no longer be accepted anyway
        while self.seen:
            oldest, until = next(iter(self.seen.items()))
            if until >= now:
                break
            del self.seen[oldest]

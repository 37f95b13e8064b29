"""The embedded MQTT broker (amqtt) for the single-host default: ``atomwatch up`` with no
``--broker``. Bound to 127.0.0.1 only, on a free port; MQTT 3.1.1, which is all the protocol
needs. Given ``users`` (name → password) it admits only those, from a password file of argon2
hashes in a private temporary folder removed at stop, so another local user cannot reach the
broker. Real deployments use Mosquitto or any MQTT cluster instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    def __init__(self, port: int | None = None, users: dict[str, str] | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.users = dict(users or {})
        self._broker = None
        self._private: Path | None = None

    def _password_file(self) -> Path:
        """The users' argon2 hashes in a folder only this user can enter (0700, file 0600)."""
        from pwdlib.hashers.argon2 import Argon2Hasher  # amqtt's own dependency

        hasher = Argon2Hasher()
        self._private = Path(tempfile.mkdtemp(prefix="atomwatch-broker-"))
        path = self._private / "passwords"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for name, password in self.users.items():
                fh.write(f"{name}:{hasher.hash(password)}\n")
        return path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        from amqtt.broker import Broker

        # amqtt logs every connection at INFO; keep the user's log readable
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.users:
            auth = {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(self._password_file())}}
        else:
            auth = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        config = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}, "plugins": auth}
        self._broker = Broker(config)
        await self._broker.start()
        log.info(
            "embedded MQTT broker (amqtt) listening on %s (%s)",
            self.url,
            "a per-run password, no anonymous clients" if self.users else "anonymous",
        )

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

"""The files of a secured site: a CA, the broker's TLS certificate, Mosquitto's configuration and
ACL, client certificates for the controller and every agent, the controller's command-signing key
and its HTTP API's tokens and certificate (``atomwatch secure init`` / ``add-host``).

Keys are ECDSA P-256 (what every OpenSSL Mosquitto links to accepts), made with the
``cryptography`` package only; private keys are written with mode 0600. The command line is
:mod:`atomwatch.cli.secure`; nothing else imports this module.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .apitokens import new_token
from .config import ConfigError
from .protocol import CONTROLLER_HOST, ROOT, ProtocolError, check_name

CA_DAYS = 3650
CERT_DAYS = 825
DEFAULT_PORT = 8883
#: the file of DIR that remembers what ``init`` was given, for ``add-host``
SETTINGS = "secure.json"


@dataclass
class Site:
    """What ``secure init`` is asked to make."""

    site: str
    hosts: list[str]
    broker_names: list[str] = field(default_factory=list)
    broker_port: int = DEFAULT_PORT
    controller_names: list[str] = field(default_factory=list)
    #: where the broker's files will be on the broker machine (absolute paths in mosquitto.conf)
    broker_dir: str | None = None


# ----------------------------------------------------------------------------- checks


def check_host(host: str) -> str:
    """A host name fit for a topic level, a certificate CN and the ACL's ``%u``."""
    try:
        check_name("host", host)
    except ProtocolError as e:
        raise ConfigError(str(e)) from None
    if host == CONTROLLER_HOST:
        raise ConfigError(f"host name {host!r} is the controller's identity; give the hypervisor another name")
    return host


def check_site(site: str) -> str:
    try:
        return check_name("site", site)
    except ProtocolError as e:
        raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------------- keys and certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(site: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"atomwatch CA {site}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server_names: list[str] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and its certificate signed by the CA: a TLS client certificate named
    ``common_name`` (the identity Mosquitto's ACL sees), or with ``server_names`` a server one
    whose SAN holds those names and IP addresses."""
    key = new_key()
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(server_names)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write(path: Path, data: bytes | str, private: bool = False) -> None:
    """Write a file; a private one is created with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_file, cert_file = directory / "ca.key", directory / "ca.crt"
    for f in (key_file, cert_file):
        if not f.exists():
            raise ConfigError(f"{f}: no such file (is {directory} a folder written by `atomwatch secure init`?)")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{directory}: ca.key or ca.crt cannot be loaded ({e})") from None
    if public_pem(key) != cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(f"{key_file} does not match {cert_file}")
    return key, cert


# ----------------------------------------------------------------------------- mosquitto


def acl(site: str) -> str:
    """Mosquitto's ACL: agents (identity = their certificate's CN = the host name) publish only
    their own topics and read only their own commands and the controller's state; only the
    controller publishes commands and state, and it reads every agent topic of the site."""
    base = f"{ROOT}/{site}"
    return f"""# atomwatch ACL of site {site!r}, written by `atomwatch secure init`.
# Every client is identified by the CN of its certificate (use_identity_as_username true):
# an agent's CN is its host name, the controller's is "{CONTROLLER_HOST}".
# Anything not granted here is refused (publishes dropped, messages not delivered).

# Every client (pattern lines apply to all users; %u is the client's own identity):
# an agent publishes only its own birth, data, death (its last will) and command replies ...
pattern write {base}/%u/birth
pattern write {base}/%u/data
pattern write {base}/%u/history
pattern write {base}/%u/death
pattern write {base}/%u/reply/+
# ... and reads only the commands addressed to it and the controllers' retained states.
pattern read {base}/%u/cmd/+
pattern read {base}/{CONTROLLER_HOST}/state/+

# The controllers alone send commands to any host and publish their states and heartbeats,
# and read every agent's topics.
user {CONTROLLER_HOST}
topic write {base}/+/cmd/+
topic readwrite {base}/{CONTROLLER_HOST}/state/+
topic readwrite {base}/{CONTROLLER_HOST}/beat/+
topic read {base}/+/birth
topic read {base}/+/data
topic read {base}/+/history
topic read {base}/+/death
topic read {base}/+/reply/+
"""


def mosquitto_conf(site: str, port: int, broker_dir: str) -> str:
    d = broker_dir.rstrip("/")
    return f"""# Mosquitto 2.0 configuration of atomwatch site {site!r}, written by `atomwatch secure init`.
# Run: mosquitto -c {d}/mosquitto.conf
# The paths below are where this folder was written (or --broker-dir); edit them if you move it.

# One listener, TLS only: no plain MQTT port.
listener {port}
certfile {d}/server.crt
keyfile {d}/server.key
cafile {d}/ca.crt
tls_version tlsv1.2
# Every client shows a certificate signed by this site's CA; its CN is its identity in the ACL.
require_certificate true
use_identity_as_username true

allow_anonymous false
acl_file {d}/acl
"""


# ----------------------------------------------------------------------------- the folder


def _client(directory: Path, ca_key, ca_cert, cn: str) -> None:
    key, cert = issue(ca_key, ca_cert, cn)
    write(directory / "client.key", key_pem(key), private=True)
    write(directory / "client.crt", cert_pem(cert))
    write(directory / "ca.crt", cert_pem(ca_cert))


def _agent(root: Path, host: str, ca_key, ca_cert, signing_pub: bytes) -> Path:
    d = root / "agents" / host
    _client(d, ca_key, ca_cert, host)
    write(d / "command-signing.pub", signing_pub)
    return d


def init(root: Path, spec: Site, force: bool = False) -> list[Path]:
    """Write every file of a secured site under ``root``; the list of files written."""
    check_site(spec.site)
    hosts = [check_host(h) for h in spec.hosts]
    if len(set(hosts)) != len(hosts):
        raise ConfigError(
            f"--host: a host is given twice ({', '.join(sorted({h for h in hosts if hosts.count(h) > 1}))})"
        )
    if not 0 < spec.broker_port < 65536:
        raise ConfigError(f"--broker-port {spec.broker_port}: not a port number in 1-65535")
    ours = ["ca.key", "ca.crt", "broker", "controller", "agents", "README.md", SETTINGS]
    existing = [n for n in ours if (root / n).exists()]
    if existing and not force:
        raise ConfigError(
            f"{root} already holds a secured site ({', '.join(existing)}): refusing to overwrite its keys "
            "(give --force to start over with a new CA, which every machine must then receive)"
        )
    for n in existing:
        p = root / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    root.mkdir(parents=True, exist_ok=True)

    ca_key, ca_cert = make_ca(spec.site)
    write(root / "ca.key", key_pem(ca_key), private=True)
    write(root / "ca.crt", cert_pem(ca_cert))

    broker = root / "broker"
    names = spec.broker_names or ["localhost", "127.0.0.1"]
    key, cert = issue(ca_key, ca_cert, names[0], server_names=names)
    write(broker / "server.key", key_pem(key), private=True)
    write(broker / "server.crt", cert_pem(cert))
    write(broker / "ca.crt", cert_pem(ca_cert))
    broker_dir = spec.broker_dir or str(broker.resolve())
    write(broker / "mosquitto.conf", mosquitto_conf(spec.site, spec.broker_port, broker_dir))
    write(broker / "acl", acl(spec.site))

    controller = root / "controller"
    _client(controller, ca_key, ca_cert, CONTROLLER_HOST)
    signing = ed25519.Ed25519PrivateKey.generate()
    write(controller / "command-signing.key", key_pem(signing), private=True)
    token = new_token()
    write(
        controller / "api-tokens",
        f"# atomwatch controller HTTP API tokens: one per line, NAME TOKEN; '#' starts a comment\noperator {token}\n",
        private=True,
    )
    write(controller / "api-token", token + "\n", private=True)
    api_names = ["localhost", "127.0.0.1", *[n for n in spec.controller_names if n not in ("localhost", "127.0.0.1")]]
    key, cert = issue(ca_key, ca_cert, api_names[-1] if spec.controller_names else "localhost", server_names=api_names)
    write(controller / "api.key", key_pem(key), private=True)
    write(controller / "api.crt", cert_pem(cert))

    signing_pub = public_pem(signing)
    for host in hosts:
        _agent(root, host, ca_key, ca_cert, signing_pub)

    settings = {"site": spec.site, "broker": names[0], "broker_port": spec.broker_port}
    write(root / SETTINGS, json.dumps(settings, indent=2) + "\n")
    write(root / "README.md", readme(spec.site, names[0], spec.broker_port, hosts))
    return sorted(p for p in root.rglob("*") if p.is_file())


def add_host(root: Path, host: str) -> Path:
    """Issue one more agent's files under ``root/agents/HOST`` with the existing CA; nothing else changes."""
    check_host(host)
    target = root / "agents" / host
    if target.exists():
        raise ConfigError(
            f"{target} exists already: host {host!r} has its files (to reissue them, delete that folder first)"
        )
    ca_key, ca_cert = load_ca(root)
    signing_key = root / "controller" / "command-signing.key"
    if signing_key.exists():
        signing_pub = public_pem(serialization.load_pem_private_key(signing_key.read_bytes(), password=None))
    else:
        pubs = sorted((root / "agents").glob("*/command-signing.pub"))
        if not pubs:
            raise ConfigError(f"{root}: neither controller/command-signing.key nor any agent's command-signing.pub")
        signing_pub = pubs[0].read_bytes()
    return _agent(root, host, ca_key, ca_cert, signing_pub)


def settings(root: Path) -> dict:
    try:
        return json.loads((root / SETTINGS).read_text())
    except (OSError, ValueError):
        return {}


def agent_command(site: str, broker: str, port: int, host: str, folder: str = "/etc/atomwatch") -> str:
    return (
        f"atomwatch agent --site {site} --host {host} --broker mqtts://{broker}:{port} "
        f"--broker-ca {folder}/ca.crt --broker-cert {folder}/client.crt --broker-key {folder}/client.key "
        f"--controller-key {folder}/command-signing.pub"
    )


def readme(site: str, broker: str, port: int, hosts: list[str]) -> str:
    first = hosts[0] if hosts else "HOST"
    return f"""# atomwatch site `{site}`: keys and certificates

Written by `atomwatch secure init`. Copy each folder to its machine (e.g. with `scp -p`, keeping the
0600 modes of the keys), and nothing else:

| file or folder | goes to | what it is |
| --- | --- | --- |
| `ca.key` | **nowhere: keep it offline** (an encrypted USB stick, a vault) | the CA's private key; whoever holds it can mint an agent or a controller. Needed only for `atomwatch secure add-host` |
| `ca.crt` | everywhere (a copy is in each folder) | the CA certificate every party checks the others against |
| `broker/` | the broker machine | `server.crt`/`server.key` (TLS), `ca.crt`, `mosquitto.conf`, `acl` |
| `controller/` | the controller machine | `client.crt`/`client.key` (identity `controller`), `ca.crt`, `command-signing.key` (signs commands), `api-tokens` (HTTP API tokens), `api-token` (the operator's token for `atomwatch alarms`/`verdict`), `api.crt`/`api.key` (the HTTP API's TLS certificate) |
| `agents/HOST/` | hypervisor HOST | `client.crt`/`client.key` (identity HOST), `ca.crt`, `command-signing.pub` (checks the controller's commands) |

The broker's certificate names `{broker}`: agents and the controller must connect to that name
(or another name or IP given with `--broker-host`/`--broker-ip`), since the name is checked.

## Broker

```sh
mosquitto -c broker/mosquitto.conf
```

`mosquitto.conf` refers to its files by absolute path (where `secure init` wrote them, or
`--broker-dir`); edit the paths if you move the folder. The key must be readable by the user
mosquitto runs as. One TLS listener on port {port}; no plain listener; every client needs a
certificate of this CA; `acl` lets an agent publish only its own topics and read only its own
commands, and only `controller` send commands.

## Controller

```sh
atomwatch controller --site {site} --broker mqtts://{broker}:{port} \\
    --broker-ca controller/ca.crt --broker-cert controller/client.crt --broker-key controller/client.key \\
    --signing-key controller/command-signing.key
```

## Agent on hypervisor `{first}` (each host with its own folder)

```sh
atomwatch agent --site {site} --host {first} --broker mqtts://{broker}:{port} \\
    --broker-ca agents/{first}/ca.crt --broker-cert agents/{first}/client.crt \\
    --broker-key agents/{first}/client.key --controller-key agents/{first}/command-signing.pub
```

The `--host` name must be the CN of the certificate (the folder name): the broker's ACL compares them.

## Another hypervisor, or a new certificate for one

```sh
atomwatch secure add-host DIR NEWHOST      # with ca.key at hand; touches nothing else
rm -r DIR/agents/HOST && atomwatch secure add-host DIR HOST   # reissue HOST's certificate
```

The ACL needs no change for a new host. A reissued certificate does not revoke the old one (no
CRL): if a host's key leaked, rotate the CA (`secure init --force`, then every machine).
"""

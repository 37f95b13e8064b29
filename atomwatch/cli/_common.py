"""Arguments several subcommands share: broker, site, plugins, options, config file."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from atomwatch.config import PASSWORD_ENV, BrokerAddress, load_file, plugin_options
from atomwatch.options import check_options
from atomwatch.pluginmanager import PluginManager, get_plugin_manager

log = logging.getLogger(__name__)


def add_plugin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins-dir", metavar="DIR", help="also load every *.py plugin file of DIR")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="PLUGIN.OPTION=VALUE",
        help="an option of a plugin (repeatable), e.g. --set libvirt.uri=qemu:///system",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file: top-level keys as the options, [plugins.NAME] tables")


def add_session_arguments(p: argparse.ArgumentParser, tick: float) -> None:
    p.add_argument(
        "--broker",
        metavar="URL",
        help="MQTT broker, mqtt://host:port or mqtts://host:port (TLS, port 8883 by default) "
        "(default: $ATOMWATCH_BROKER or mqtt://127.0.0.1:1883)",
    )
    add_broker_tls_arguments(p)
    p.add_argument("--site", help="site name: the topic level above hosts (default: default)")
    p.add_argument("--tick", type=float, help=f"seconds between ticks (default {tick:g})")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")


def add_message_size_argument(p: argparse.ArgumentParser) -> None:
    """``--max-message-size``: the controller's and the agent's (``max_message_size`` in a config file)."""
    p.add_argument(
        "--max-message-size",
        metavar="BYTES",
        help="refuse, before parsing, an MQTT payload larger than this, e.g. 524288 or 512KiB (default 1MiB, "
        "5.2 times a birth of 1,000 series)",
    )


def add_broker_tls_arguments(p: argparse.ArgumentParser) -> None:
    """The TLS files and credentials of ``--broker`` (also TOML keys ``broker_ca``, … of ``--config``)."""
    p.add_argument(
        "--broker-ca", metavar="FILE", help="mqtts://: the CA certificate (PEM) the broker's must be signed by"
    )
    p.add_argument("--broker-cert", metavar="FILE", help="mqtts://: this client's certificate (PEM): its identity")
    p.add_argument("--broker-key", metavar="FILE", help="mqtts://: the private key (PEM) of --broker-cert")
    p.add_argument("--broker-username", metavar="NAME", help="the broker username (or mqtt[s]://NAME@host)")
    p.add_argument(
        "--broker-password-file",
        metavar="FILE",
        help=f"read the broker password from FILE (else ${PASSWORD_ENV}; never on the command line)",
    )


def broker_address(args: argparse.Namespace, file_config: dict[str, Any], url: str) -> BrokerAddress:
    """``url`` with the ``--broker-*`` options (command line, else the config file)."""
    return BrokerAddress.parse(
        url,
        ca=pick(args, file_config, "broker_ca", None),
        cert=pick(args, file_config, "broker_cert", None),
        key=pick(args, file_config, "broker_key", None),
        username=pick(args, file_config, "broker_username", None),
        password_file=pick(args, file_config, "broker_password_file", None),
    )


def warn_identity(broker: BrokerAddress, expected: str, role: str) -> None:
    """Log a warning when the client certificate's CN is not ``expected``: a broker set up by
    ``atomwatch secure init`` takes the CN as the identity, and would silently drop what this
    process publishes under another name."""
    if not broker.cert:
        return
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(Path(broker.cert).read_bytes())
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except (OSError, ValueError):
        return  # BrokerAddress has checked the file; a chain file it accepted is not ours to judge
    if names and names[0] != expected:
        log.warning(
            "--broker-cert %s names %r but this %s is %r: a broker whose ACL uses the certificate's name "
            "(atomwatch secure init) will drop what it publishes",
            broker.cert,
            names[0],
            role,
            expected,
        )


def plugin_manager(args: argparse.Namespace, plugin_opts: dict[str, dict[str, Any]] | None = None) -> PluginManager:
    """The plugins; with ``plugin_opts``, every table of a plugin that declared its options is
    checked now (:func:`atomwatch.check_options`), so a bad option stops the command before
    anything starts instead of failing later inside a hook."""
    dirs = args.plugins_dir or os.environ.get("ATOMWATCH_PLUGINS_DIR")
    pm = get_plugin_manager(plugins_dir=dirs)
    if plugin_opts is not None:
        check_options(plugin_opts)
    return pm


def options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the config file's top-level values, the merged plugin options)."""
    file_config = load_file(getattr(args, "config", None))
    return file_config, plugin_options(file_config, getattr(args, "settings", []))


def pick(args: argparse.Namespace, file_config: dict[str, Any], name: str, default: Any) -> Any:
    """A value from the command line, else the config file, else the default."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    return file_config.get(name, default)

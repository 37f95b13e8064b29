"""Arguments several subcommands share: broker, site, plugins, options, config file.

Also the keys the agent and the controller share (:data:`BROKER_KEYS`, :data:`SESSION_KEYS`), and
the checks of a configuration file every command taking ``--config`` runs: unknown keys and
tables (:func:`options`), and the ``[plugins.NAME]`` tables against the loaded plugins
(:func:`plugin_manager`). The rules: ``docs/configuration.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from atomwatch.config import PASSWORD_ENV, BrokerAddress, ConfigError, file_tables, load_file, plugin_options
from atomwatch.options import Duration, Range, declared_options, did_you_mean, parse_options
from atomwatch.pluginmanager import PluginManager, get_plugin_manager
from atomwatch.settings import Key, unknown_keys

#: the broker and its TLS files and credentials (``--broker``, ``--broker-ca`` …; keys of both roles)
BROKER_KEYS = (
    Key("broker", expected="a URL, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; a cluster's nodes comma-separated"),
    Key("broker_ca", expected="a file (PEM)"),
    Key("broker_cert", expected="a file (PEM)"),
    Key("broker_key", expected="a file (PEM)"),
    Key("broker_username", expected="a user name"),
    Key("broker_password_file", expected="a file"),
)
#: a positive duration: seconds, or text such as "10s", "5min", "1h"
POSITIVE_DURATION = Annotated[float, Duration, Range(gt=0)]
DURATION = Annotated[float, Duration]
#: the keys of add_session_arguments besides the broker's (``site`` differs: one for the agent,
#: a list for the controller)
SESSION_KEYS = (Key("tick", POSITIVE_DURATION), Key("duration", DURATION))
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

log = logging.getLogger(__name__)


def add_plugin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins-dir", metavar="DIR", help="also load every *.py plugin file of DIR")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="PLUGIN.OPTION=VALUE",
        help="an option of a plugin (repeatable; it wins over the file's [plugins.PLUGIN] table), e.g. "
        "--set libvirt.uri=qemu:///system",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file: top-level keys as the options, [plugins.NAME] tables")


def add_session_arguments(p: argparse.ArgumentParser, tick: float) -> None:
    p.add_argument(
        "--broker",
        metavar="URL",
        help="MQTT broker, mqtt://host:port or mqtts://host:port (TLS, port 8883 by default); the nodes of a "
        "clustered broker comma-separated, tried in turn (default: $ATOMWATCH_BROKER or mqtt://127.0.0.1:1883)",
    )
    add_broker_tls_arguments(p)
    p.add_argument("--site", help="site name: the topic level above hosts (default: default)")
    p.add_argument(
        "--tick", metavar="DURATION", help=f"time between ticks: seconds, or e.g. 10s, 1min (default {tick:g})"
    )
    p.add_argument("--duration", metavar="DURATION", help="stop after this long: seconds, or e.g. 30s, 5min, 1h")


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


def broker_address(values: Mapping[str, Any], url: str) -> BrokerAddress:
    """``url`` with the ``--broker-*`` options (resolved values of :data:`BROKER_KEYS`)."""
    return BrokerAddress.parse(
        url,
        ca=values.get("broker_ca"),
        cert=values.get("broker_cert"),
        key=values.get("broker_key"),
        username=values.get("broker_username"),
        password_file=values.get("broker_password_file"),
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


def plugin_manager(
    args: argparse.Namespace,
    plugin_opts: dict[str, dict[str, Any]] | None = None,
    file_config: Mapping[str, Any] | None = None,
) -> PluginManager:
    """The plugins; with ``plugin_opts``, every table is checked now against the loaded plugins
    (:func:`plugin_problems`), so a bad option stops the command before anything starts instead
    of failing later inside a hook."""
    dirs = getattr(args, "plugins_dir", None) or os.environ.get("ATOMWATCH_PLUGINS_DIR")
    pm = get_plugin_manager(plugins_dir=dirs)
    if plugin_opts is not None:
        problems = plugin_problems(pm, plugin_opts, file_config or {}, getattr(args, "config", None))
        if problems:
            raise ConfigError("\n".join(problems))
    return pm


def _unchecked_tables(pm: PluginManager) -> set[str]:
    """Table names of loaded plugins that declared no options (theirs are read unchecked): the
    plugin's name and its detectors' names."""
    declared_by = {cls.__module__ for cls in declared_options().values()}
    out: set[str] = set()
    quiet: set[str] = set()
    for name, plugin in pm.list_name_plugin():
        module = getattr(plugin, "__name__", None) or type(plugin).__module__
        if not any(m == module or m.startswith(module + ".") for m in declared_by):
            out.add(name)
            quiet.add(name)
    if quiet:
        from atomwatch.pluginmanager import call_safely

        for plugin, factories in call_safely(pm, "register_detectors"):
            if plugin in quiet:
                out.update(n for f in factories or [] if isinstance(n := getattr(f, "name", None), str))
    return out


def plugin_problems(
    pm: PluginManager, plugin_opts: Mapping[str, Mapping[str, Any]], file_config: Mapping[str, Any], path: str | None
) -> list[str]:
    """One line per problem of the plugin tables: a table no loaded plugin reads (with the loaded
    ones' names), and every option a plugin that declared its options refuses
    (:func:`atomwatch.parse_options`). A problem of the file names it and the table."""
    declared = declared_options()
    try:
        in_file = file_tables(file_config, path)
    except ConfigError as e:
        return [str(e)]
    problems = []
    unknown = [name for name in plugin_opts if name not in declared]
    known = set(declared)
    if unknown:
        known |= _unchecked_tables(pm)
    for name in unknown:
        if name in known:
            continue
        where = f"{path}: [plugins.{name}]" if name in in_file else f"--set {name}.KEY=VALUE"
        problems.append(
            f"{where}: unknown plugin table {name!r}{did_you_mean(name, known)}; the loaded plugins' tables: "
            + ", ".join(sorted(known))
        )
    for name, table in plugin_opts.items():
        cls = declared.get(name)
        if cls is None:
            continue
        if name in in_file:
            try:
                parse_options(name, cls, in_file[name])
            except ConfigError as e:
                problems.append(f"{path}: [plugins.{name}]: {e}")
                continue
        try:
            parse_options(name, cls, table)
        except ConfigError as e:
            problems.append(str(e))
    return problems


def role_keys() -> tuple[Key, ...]:
    """The options of both roles (what ``up``, ``detect`` and ``plot`` accept in a ``--config``
    file: one file may serve them all)."""
    from . import agent, controller

    return tuple({k.name: k for k in (*agent.KEYS, *controller.KEYS)}.values())


def options(
    args: argparse.Namespace,
    keys: Iterable[Key] | None = None,
    role: str = "",
    default_plugin: str | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the config file's top-level values, the merged plugin options). With ``keys`` (the
    options the command reads from the file), a key or table of the file that is none of them is
    refused, every one at once (:func:`atomwatch.settings.unknown_keys`)."""
    path = getattr(args, "config", None)
    file_config = load_file(path)
    if keys is not None:
        problems = unknown_keys(file_config, path, [k.name for k in keys], role)
        if problems:
            raise ConfigError("\n".join(problems))
    return file_config, plugin_options(file_config, getattr(args, "settings", []), default_plugin, path)

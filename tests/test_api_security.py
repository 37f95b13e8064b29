"""The HTTP API's defences (issue 13): bearer tokens and their file, JSON-only verdicts, Origin and
body-size checks, TLS, refusing exposure; and the operator's CLI with tokens, end to end.

Every test talks real HTTP(S) over loopback to the API server of a real controller connected to
the suite's Mosquitto; alarms are put straight into that controller's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

import atomwatch
from atomwatch.apitokens import TokenFile, local_user_name, parse_tokens
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.pluginmanager import PluginManager
from atomwatch.series import SeriesKey

ALICE = "a" * 20 + "-alice-token-0123456789"
BOB = "b" * 20 + "-bob-token-0123456789ab"


def tokens_file(path: Path, text: str | None = None, mode: int = 0o600) -> Path:
    path.write_text(text if text is not None else f"# operators\nalice {ALICE}\n\nbob   {BOB}  # on call\n")
    path.chmod(mode)
    return path


def anomaly(index: int = 1) -> atomwatch.Anomaly:
    return atomwatch.Anomaly(
        detector="d",
        scope="s/h",
        index=index,
        ts=1000.0 + index,
        score=9.0,
        threshold=5.0,
        blame=[atomwatch.Blame(column=SeriesKey("u1", "vm1", "CPUUtilization", "%"), direction="up", score=9.0)],
    )


@contextlib.contextmanager
def running(mosquitto, **http):
    """A controller (no plugins) running in its own thread with its API on a free loopback port
    unless ``http`` says otherwise; yields (controller, base URL reached via 127.0.0.1)."""
    http.setdefault("http", f"127.0.0.1:{free_port()}")
    config = ControllerConfig(broker=BrokerAddress.parse(mosquitto.url), sites=["sec"], tick=0.2, db=":memory:", **http)
    controller = Controller(config, PluginManager())
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(controller.run())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while controller.http is None or not controller.http.thread.is_alive() or not controller.connected.is_set():
        if errors:
            raise errors[0]
        assert time.monotonic() < deadline, "the controller did not start"
        time.sleep(0.02)
    port = controller.http.server.server_address[1]
    scheme = "https" if config.http_cert else "http"
    try:
        yield controller, f"{scheme}://127.0.0.1:{port}"
    finally:
        controller.loop.call_soon_threadsafe(controller.stop)
        thread.join(15)
        assert not errors, errors


def request(url, method="GET", body=None, token=None, headers=None, data=None, context=None):
    """(status, headers, JSON or text body) of one request."""
    h = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    if data is None and body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode()


def verdict_url(base: str, alarm_id: int) -> str:
    return f"{base}/api/alarms/{alarm_id}/verdict"


@pytest.fixture
def api(mosquitto, tmp_path):
    with running(mosquitto, http_tokens=str(tokens_file(tmp_path / "tokens"))) as (controller, base):
        yield controller, base


# ---------------------------------------------------------------------------- tokens on verdicts


def test_verdict_without_a_token_is_refused_401(api, caplog):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    with caplog.at_level(logging.WARNING, "atomwatch.controller.api"):
        status, headers, body = request(verdict_url(base, alarm.id), "POST", {"verdict": "malicious"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "Bearer" in body["error"]
    assert controller.alarms.get(alarm.id).state == "open"
    assert any("127.0.0.1" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


def test_verdict_with_a_wrong_token_is_refused_401_and_the_token_is_not_logged(api, caplog):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    wrong = "x" * 40
    with caplog.at_level(logging.DEBUG, "atomwatch"):
        status, headers, body = request(verdict_url(base, alarm.id), "POST", {"verdict": "malicious"}, token=wrong)
        status2, _, _ = request(verdict_url(base, alarm.id), "POST", {"verdict": "malicious"}, token=ALICE[:-1])
    assert status == status2 == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert "wrong token" in body["error"]
    assert controller.alarms.get(alarm.id).state == "open"
    assert wrong not in caplog.text and ALICE[:-1] not in caplog.text


def test_verdict_as_text_plain_with_a_valid_token_is_refused_415(api):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    data = json.dumps({"verdict": "malicious"}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": ctype} if ctype else {}
        status, _, body = request(verdict_url(base, alarm.id), "POST", data=data, token=ALICE, headers=headers)
        assert status == 415 and "application/json" in body["error"], ctype
    assert controller.alarms.get(alarm.id).state == "open"
    # parameters of application/json are fine
    status, _, body = request(
        verdict_url(base, alarm.id),
        "POST",
        data=data,
        token=ALICE,
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert status == 200 and body["state"] == "malicious"


def test_verdict_from_a_foreign_origin_is_refused_403(api):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    for origin in ("https://evil.example", "null", base.replace("127.0.0.1", "127.0.0.1.evil.example")):
        status, _, body = request(
            verdict_url(base, alarm.id), "POST", {"verdict": "malicious"}, token=ALICE, headers={"Origin": origin}
        )
        assert status == 403 and "origin" in body["error"].lower(), origin
    # DNS rebinding: a page of evil.example resolved to 127.0.0.1 is same-origin, but its Host is not loopback
    status, _, body = request(
        verdict_url(base, alarm.id),
        "POST",
        {"verdict": "malicious"},
        token=ALICE,
        headers={"Origin": "http://evil.example:8470", "Host": "evil.example:8470"},
    )
    assert status == 403 and "Host" in body["error"]
    assert controller.alarms.get(alarm.id).state == "open"
    status, _, body = request(
        verdict_url(base, alarm.id), "POST", {"verdict": "normal"}, token=ALICE, headers={"Origin": base}
    )
    assert status == 200 and body["state"] == "closed", "the API's own origin is fine"


def test_oversized_verdict_body_is_refused_413(api):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    big = {"verdict": "malicious", "reason": "x" * (64 * 1024)}
    status, _, body = request(verdict_url(base, alarm.id), "POST", big, token=ALICE)
    assert status == 413 and "65536" in body["error"]
    assert controller.alarms.get(alarm.id).state == "open"


def test_bad_json_and_bad_verdicts_are_400_naming_what_is_wrong(api):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    url = verdict_url(base, alarm.id)
    status, _, body = request(url, "POST", data=b"{nope", token=ALICE, headers={"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in body["error"]
    status, _, body = request(url, "POST", ["malicious"], token=ALICE)
    assert status == 400 and "JSON object" in body["error"]
    status, _, body = request(url, "POST", {"verdict": "sure"}, token=ALICE)
    assert status == 400 and '"verdict"' in body["error"] and "'sure'" in body["error"]
    status, _, body = request(url, "POST", {"verdict": "normal", "actor": "bob"}, token=ALICE)
    assert status == 400 and "'alice'" in body["error"], "an actor other than the token's name is refused"
    assert controller.alarms.get(alarm.id).state == "open"


def test_a_verdict_with_a_valid_token_succeeds_and_the_audit_names_the_token(api):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    status, headers, body = request(verdict_url(base, alarm.id), "POST", {"verdict": "malicious", "pid": 42}, token=BOB)
    assert status == 200 and body["state"] == "malicious"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    verdicts = [e for e in controller.alarms.audit(alarm.id) if e["action"].startswith("verdict")]
    assert [(e["actor"], e["action"]) for e in verdicts] == [("bob", "verdict malicious")]
    # an actor equal to the token's name is accepted
    other, _ = controller.alarms.record(anomaly(100))
    status, _, body = request(verdict_url(base, other.id), "POST", {"verdict": "normal", "actor": "alice"}, token=ALICE)
    assert status == 200 and any(e["actor"] == "alice" for e in body["audit"])


# ---------------------------------------------------------------------------- reads and open routes


def test_reads_need_the_token(api):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    for path in ("/api/alarms", f"/api/alarms/{alarm.id}", "/api/scopes", "/api/alarms?state=open"):
        status, headers, _ = request(base + path)
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"], path
        status, _, _ = request(base + path, token="y" * 32)
        assert status == 401, path
        status, headers, body = request(base + path, token=ALICE)
        assert status == 200 and headers["Cache-Control"] == "no-store", path
    status, _, body = request(base + "/api/alarms", token=ALICE)
    assert body["alarms"][0]["id"] == alarm.id
    status, _, body = request(base + "/api/alarms", token=ALICE, headers={"Origin": "https://evil.example"})
    assert status == 403


def test_metrics_and_health_work_without_a_token_and_reveal_no_alarm_details(api):
    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    controller.add_findings(alarm.id, "introspect", {"kind": "introspection", "summary": "pid 4242 xmrig-secret"})
    status, headers, body = request(base + "/api/health")
    assert status == 200 and body["ok"] is True and set(body) == {"ok", "connected", "rows"}
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, text = request(base + "/metrics")
    assert status == 200 and 'atomwatch_alarms{state="open"} 1.0' in text
    # the blamed VM and metric are there (bounded by --metrics-blame-limit), nothing else of the alarm
    assert 'atomwatch_alarm_blamed_rows{detector="d",host="h",metric="CPUUtilization",site="s",vm="vm1"} 1.0' in text
    assert "xmrig-secret" not in text and "4242" not in text and "alice" not in text, "no findings, no token names"
    assert f'alarm="{alarm.id}"' not in text and "alarm_id" not in text, "no label per alarm"


def test_metrics_blame_limit_0_keeps_vm_names_off_metrics(mosquitto, tmp_path):
    with running(mosquitto, http_tokens=str(tokens_file(tmp_path / "tokens")), metrics_blame_limit=0) as (c, base):
        c.alarms.record(anomaly())
        status, _, text = request(base + "/metrics")
    assert status == 200 and 'atomwatch_alarms{state="open"} 1.0' in text
    assert "vm1" not in text and "atomwatch_alarm_blamed_columns_left_out 1.0" in text


def test_tokens_file_changes_are_picked_up_for_rotation(api, tmp_path):
    controller, base = api
    path = tmp_path / "tokens"
    new = "n" * 40
    path.write_text(f"alice {ALICE}\nalice {new}\n")  # rotation: the new token beside the old
    assert request(base + "/api/alarms", token=new)[0] == 200
    assert request(base + "/api/alarms", token=ALICE)[0] == 200
    path.write_text(f"alice {new}\n")  # the old line removed
    assert request(base + "/api/alarms", token=ALICE)[0] == 401
    assert request(base + "/api/alarms", token=BOB)[0] == 401
    assert request(base + "/api/alarms", token=new)[0] == 200
    path.write_text("alice short\n")  # broken: every request is refused until it is fixed
    assert request(base + "/api/alarms", token=new)[0] == 503
    path.write_text(f"alice {new}\n# fixed\n")
    assert request(base + "/api/alarms", token=new)[0] == 200


# ---------------------------------------------------------------------------- the tokens file


def test_a_group_readable_tokens_file_is_refused(mosquitto, tmp_path):
    path = tokens_file(tmp_path / "tokens", mode=0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        TokenFile(path)
    from atomwatch.cli import main

    code = main(
        ["controller", "--broker", mosquitto.url, "--http", f"127.0.0.1:{free_port()}", "--http-tokens", str(path)]
    )
    assert code == 2


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("alice\n", 1, "NAME TOKEN"),
        (f"# c\n\nal ice {ALICE}\n", 3, "NAME TOKEN"),
        (f"alice {ALICE}\nbad/name {BOB}\n", 2, "name"),
        (f"alice {ALICE}\nbob tooshort\n", 2, "at least 32"),
        (f"alice {ALICE}\nbob {ALICE}\n", 2, "already"),
    ],
)
def test_a_malformed_tokens_line_names_file_and_line(tmp_path, text, line, what):
    path = tokens_file(tmp_path / "tokens", text)
    with pytest.raises(ConfigError, match=f"{path}:{line}: .*{what}"):
        TokenFile(path)


def test_tokens_file_format(tmp_path):
    text = f"# header\n\n  alice   {ALICE}   # trailing\nops@eu1.x-y_z\t{BOB}\nalice {'c' * 32}\n"
    assert parse_tokens(text, "f") == [("alice", ALICE), ("ops@eu1.x-y_z", BOB), ("alice", "c" * 32)]
    with pytest.raises(ConfigError, match="holds no token"):
        TokenFile(tokens_file(tmp_path / "empty", "# nothing\n"))


# ---------------------------------------------------------------------------- exposure


def test_binding_all_addresses_without_tls_and_tokens_is_refused(mosquitto, tmp_path):
    broker = BrokerAddress.parse(mosquitto.url)
    port = free_port()
    with pytest.raises(ConfigError) as e:
        ControllerConfig(broker=broker, http=f"0.0.0.0:{port}")
    assert "--http-tokens FILE" in str(e.value) and "--http-cert" in str(e.value) and "--http-insecure" in str(e.value)
    with pytest.raises(ConfigError, match="--http-cert"):
        ControllerConfig(broker=broker, http=f"0.0.0.0:{port}", http_tokens=str(tokens_file(tmp_path / "t")))
    for loopback in ("127.0.0.1", "127.1.2.3", "localhost", "[::1]"):
        ControllerConfig(broker=broker, http=f"{loopback}:{port}")
    from atomwatch.cli import main

    code = main(["controller", "--broker", mosquitto.url, "--http", f"0.0.0.0:{port}", "--duration", "5"])
    assert code == 2


def test_binding_all_addresses_with_http_insecure_works_with_a_warning(mosquitto, tmp_path, caplog):
    port = free_port()
    with caplog.at_level(logging.WARNING, "atomwatch.controller"):
        with running(mosquitto, http=f"0.0.0.0:{port}", http_insecure=True) as (controller, base):
            assert base == f"http://127.0.0.1:{port}"
            assert request(base + "/api/health")[0] == 200
            token = parse_tokens(controller.http.tokens_path.read_text(), "local")[0][1]
            assert request(base + "/api/alarms")[0] == 401, "tokens still apply"
            assert request(base + "/api/alarms", token=token)[0] == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "--http-insecure" in r.getMessage()]
    assert len(warnings) == 1


# ---------------------------------------------------------------------------- TLS


def make_cert(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atomwatch test controller")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "api.crt", folder / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_https_with_a_generated_certificate_verified_by_the_client(mosquitto, tmp_path, monkeypatch, capsys):
    from atomwatch.cli import main

    cert, key = make_cert(tmp_path)
    tokens = tokens_file(tmp_path / "tokens")
    with running(mosquitto, http_tokens=str(tokens), http_cert=str(cert), http_key=str(key)) as (controller, base):
        assert base.startswith("https://")
        assert controller.http.server.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
        alarm, _ = controller.alarms.record(anomaly())
        ctx = ssl.create_default_context(cafile=str(cert))
        status, _, body = request(base + "/api/alarms", token=ALICE, context=ctx)
        assert status == 200 and body["alarms"][0]["id"] == alarm.id
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
            request(base.replace("https", "http") + "/api/health")
        assert request(base + "/api/health", context=ctx)[0] == 200, "the server survived it"
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((urllib.error.URLError, ssl.SSLError, OSError)):
            request(base + "/api/health", context=old)

        monkeypatch.setenv("ATOMWATCH_API_TOKEN", ALICE)
        assert main(["alarms", "--controller", base, "--ca", str(cert)]) == 0
        assert f"#{alarm.id}" in capsys.readouterr().out
        monkeypatch.setenv("ATOMWATCH_API_CA", str(cert))
        assert main(["verdict", str(alarm.id), "normal", "--controller", base]) == 0
        assert "closed" in capsys.readouterr().out
        monkeypatch.delenv("ATOMWATCH_API_CA")
        assert main(["alarms", "--controller", base]) == 1, "without the CA the certificate is not trusted"
        err = capsys.readouterr().err
        assert "--ca" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert main(["alarms", "--controller", base, "--ca", str(tmp_path / "nope.pem")]) == 2
        assert "nope.pem" in capsys.readouterr().err


def test_tls_files_that_cannot_be_used_are_named(mosquitto, tmp_path):
    from atomwatch.controller.api import tls_context

    cert, key = make_cert(tmp_path)
    with pytest.raises(ConfigError, match=f"--http-cert {tmp_path / 'missing.crt'}"):
        tls_context(str(tmp_path / "missing.crt"), str(key))
    with pytest.raises(ConfigError, match=f"--http-key {cert}: no PEM private key"):
        tls_context(str(cert), str(cert))
    (tmp_path / "other").mkdir()
    other_cert, _ = make_cert(tmp_path / "other")
    with pytest.raises(ConfigError, match="does the key match"):
        tls_context(str(other_cert), str(key))
    with pytest.raises(ConfigError, match="go together"):
        ControllerConfig(broker=BrokerAddress.parse(mosquitto.url), http="127.0.0.1:1", http_cert=str(cert))


# ---------------------------------------------------------------------------- the CLI, end to end


def test_cli_with_the_token_in_the_environment(api, monkeypatch, capsys):
    from atomwatch.cli import main

    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    monkeypatch.setenv("ATOMWATCH_API_TOKEN", BOB)
    assert main(["alarms", "--controller", base]) == 0
    assert f"#{alarm.id}" in capsys.readouterr().out
    assert main(["alarm", str(alarm.id), "--controller", base]) == 0
    assert "audit:" in capsys.readouterr().out
    assert main(["verdict", str(alarm.id), "normal", "--controller", base, "--reason", "backup"]) == 0
    out = capsys.readouterr().out
    assert "closed (workload-change)" in out and "bob" in out
    assert [e["actor"] for e in controller.alarms.audit(alarm.id) if e["action"] == "verdict normal"] == ["bob"]


def test_cli_with_a_token_file(api, monkeypatch, tmp_path, capsys):
    from atomwatch.cli import main

    controller, base = api
    monkeypatch.delenv("ATOMWATCH_API_TOKEN", raising=False)
    (tmp_path / "api-token").write_text(ALICE + "\n")
    assert main(["alarms", "--controller", base, "--token-file", str(tmp_path / "api-token")]) == 0
    assert main(["alarms", "--controller", base, "--token-file", str(tmp_path / "nope")]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_cli_fails_with_one_clear_line_and_exit_2_on_a_401(api, monkeypatch, capsys):
    from atomwatch.cli import main

    controller, base = api
    alarm, _ = controller.alarms.record(anomaly())
    monkeypatch.setenv("ATOMWATCH_API_TOKEN", "z" * 40)
    for argv in (["verdict", str(alarm.id), "malicious"], ["alarms"], ["alarm", str(alarm.id)]):
        assert main([*argv, "--controller", base]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "401" in err and "ATOMWATCH_API_TOKEN" in err and "z" * 40 not in err
    assert controller.alarms.get(alarm.id).state == "open"


def test_with_nothing_configured_the_local_token_file_joins_controller_and_cli(
    mosquitto, tmp_path, monkeypatch, capsys
):
    """``atomwatch up`` then ``atomwatch verdict`` in another terminal of the same user: the
    controller creates the user's tokens file, the CLI reads it; no token, no verdict."""
    from atomwatch.cli import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("ATOMWATCH_API_TOKEN", raising=False)
    with running(mosquitto) as (controller, base):
        path = tmp_path / "state" / "atomwatch" / "api-tokens"
        assert controller.http.tokens_path == path
        assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
        ((name, token),) = parse_tokens(path.read_text(), path)
        assert name == local_user_name() and len(token) >= 32
        alarm, _ = controller.alarms.record(anomaly())
        assert request(verdict_url(base, alarm.id), "POST", {"verdict": "normal"})[0] == 401
        assert main(["verdict", str(alarm.id), "normal", "--controller", base]) == 0
        assert "closed (workload-change)" in capsys.readouterr().out
        assert [e["actor"] for e in controller.alarms.audit(alarm.id) if e["action"] == "verdict normal"] == [name]
    # a second start reuses the file (the CLI's token keeps working)
    with running(mosquitto) as (controller, base):
        assert parse_tokens(path.read_text(), path) == [(name, token)]
        assert request(base + "/api/alarms", token=token)[0] == 200

"""The shipped nginx configs (deploy/nginx/) in front of a real gunicorn.

Debian's nginx runs as a real process with a temporary prefix. The shipped files are
used as they are, with only the upstream address, the listen ports, the certificate
paths and the access log path replaced (each replacement must match, so a change to
the shipped file cannot go untested). Everything listens on 127.0.0.1 and [::1].
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import client as httpclient
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import (
    ROOT,
    Server,
    chat_client,
    free_port,
    http,
    make_token,
    raw_handshake,
    recv_json,
    recv_until,
    unavailable,
    ws_connect,
)
from wsapp.settings import Settings

NGINX_DIR = ROOT / "deploy" / "nginx"
SHIPPED_UPSTREAM = "server 127.0.0.1:8000;"
SHIPPED_CERT = "/etc/letsencrypt/live/ws.example.com/fullchain.pem"
SHIPPED_KEY = "/etc/letsencrypt/live/ws.example.com/privkey.pem"
SHIPPED_ACCESS_LOG = "/var/log/nginx/wsapp.access.log"
SHIPPED_SERVER_NAME = "server_name ws.example.com;"


def _nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found:
        return found
    unavailable("nginx is not installed")
    raise AssertionError("unreachable")


@dataclass
class Cert:
    cert: Path
    key: Path


@dataclass
class Nginx:
    """An nginx process serving one shipped config from a temporary prefix."""

    proc: subprocess.Popen[bytes]
    prefix: Path
    http_port: int
    https_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:  # what helpers.ws_connect / chat_client use
        return f"ws://127.0.0.1:{self.http_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM: fast shutdown. SIGQUIT would wait for every open WebSocket to end.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.prefix, ignore_errors=True)


def substitute(text: str, replacements: list[tuple[str, str, int]]) -> str:
    """Replace each `old` by `new`, asserting it occurs exactly `count` times in the shipped file."""
    for old, new, count in replacements:
        found = text.count(old)
        assert found == count, f"{old!r} occurs {found} times in the shipped config, expected {count}"
        text = text.replace(old, new)
    return text


# Debian's sites-enabled/default, as the package installs it (less comments and root):
# the default server for every name on port 80, IPv4 and IPv6.
DEBIAN_DEFAULT_SITE = """
server {{
    listen 127.0.0.1:{port} default_server;
    listen [::1]:{port} default_server;
    server_name _;
    location / {{ default_type text/html; return 200 "<h1>Welcome to nginx!</h1>"; }}
}}
"""


def start_nginx(
    conf_name: str,
    upstream_port: int,
    cert: Cert | None = None,
    timeout: float = 10,
    server_name: str | None = None,
    debian_default: bool = False,
) -> Nginx:
    """nginx with a shipped config, on 127.0.0.1 and [::1] (the shipped file listens on both).

    `server_name` replaces the shipped one; `debian_default` adds Debian's default site
    on the same port, as a server that installs nginx from Debian has it."""
    binary = _nginx_binary()
    prefix = Path(tempfile.mkdtemp(prefix="wsapp-nginx-"))
    prefix.chmod(0o755)  # as root, nginx workers run as nobody and create their temp dirs here
    http_port = free_port()
    https_port = free_port() if cert else 0
    tls = cert is not None
    replacements = [
        (SHIPPED_UPSTREAM, f"server 127.0.0.1:{upstream_port};", 1),
        ("listen 80;", f"listen 127.0.0.1:{http_port};", 1),
        ("listen [::]:80;", f"listen [::1]:{http_port};", 1),
        (SHIPPED_ACCESS_LOG, str(prefix / "access.log"), 2 if tls else 1),
    ]
    if server_name is not None:
        replacements.append((SHIPPED_SERVER_NAME, f"server_name {server_name};", 2 if tls else 1))
    if cert is not None:
        replacements += [
            ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;", 1),
            ("listen [::]:443 ssl;", f"listen [::1]:{https_port} ssl;", 1),
            (SHIPPED_CERT, str(cert.cert), 1),
            (SHIPPED_KEY, str(cert.key), 1),
        ]
    (prefix / "wsapp.conf").write_text(substitute((NGINX_DIR / conf_name).read_text(), replacements))
    (prefix / "nginx.conf").write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
lock_file {prefix}/nginx.lock;
error_log {prefix}/error.log notice;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    access_log {prefix}/default-access.log;
    include {prefix}/wsapp.conf;
    {DEBIAN_DEFAULT_SITE.format(port=http_port) if debian_default else ""}
}}
""")
    with open(prefix / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    nginx = Nginx(proc, prefix, http_port, https_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{nginx.error_log()}")
        if all(_accepts(port) for port in (http_port, https_port) if port):
            return nginx
        time.sleep(0.05)
    nginx.stop()
    raise RuntimeError(f"nginx did not listen within {timeout}s:\n{nginx.error_log()}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def make_cert(directory: Path) -> Cert:
    """A throwaway self-signed certificate for 127.0.0.1, ::1 and localhost (its own trust anchor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsapp test 127.0.0.1")])
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
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.DNSName("localhost"),
                ]
            ),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    paths = Cert(directory / "cert.pem", directory / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths.key.chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def backend() -> Iterator[Server]:
    _nginx_binary()  # skip (or fail in CI) before starting anything
    srv = Server(env={"WSAPP_RATE_LIMIT": "0"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def nginx_plain(backend: Server) -> Iterator[Nginx]:
    nginx = start_nginx("wsapp.conf", backend.port)
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def nginx_tls(backend: Server, cert: Cert) -> Iterator[Nginx]:
    nginx = start_nginx("wsapp-tls.conf", backend.port, cert)
    yield nginx
    nginx.stop()


@pytest.fixture
def start_nginx_for() -> Iterator[Callable[..., Nginx]]:
    """Start nginx with a shipped config in front of any port; stopped after the test."""
    started: list[Nginx] = []

    def start(conf_name: str, upstream_port: int, cert: Cert | None = None, **kw: Any) -> Nginx:
        nginx = start_nginx(conf_name, upstream_port, cert, **kw)
        started.append(nginx)
        return nginx

    yield start
    for nginx in started:
        nginx.stop()


def tls_context(cert: Cert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert.cert))


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    cert: Cert | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP(S) request with exactly these headers; redirects are not followed."""
    conn: httpclient.HTTPConnection
    if cert is None:
        conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = httpclient.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls_context(cert))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_for_log(read: Callable[[], str], needle: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# --- the shipped files agree with the app's defaults -------------------------------------------


@pytest.mark.parametrize("conf_name", ["wsapp.conf", "wsapp-tls.conf"])
def test_shipped_limits_match_app_defaults(conf_name: str) -> None:
    text = (NGINX_DIR / conf_name).read_text()
    defaults = Settings()
    timeouts = re.findall(r"^\s*proxy_(?:read|send)_timeout\s+(\d+)s;", text, re.M)
    assert len(timeouts) == 2
    # an idle connection carries a ping (and its pong) every ping interval: nginx must outwait it
    assert all(int(t) >= 2 * defaults.ping_interval_s for t in timeouts)
    (body_size,) = re.findall(r"^\s*client_max_body_size\s+(\d+)k;", text, re.M)
    assert int(body_size) * 1024 == defaults.max_message_bytes
    assert "proxy_set_header Host $http_host;" in text and "proxy_set_header Host $host;" not in text


# --- through nginx, against the real app -------------------------------------------------------


def test_echo_over_wss_with_subprotocol_token(nginx_tls: Nginx, cert: Cert) -> None:
    token = make_token("tls-echo")
    ws = websocket.create_connection(
        nginx_tls.wss_url + "/ws/echo", timeout=10, subprotocols=[token], sslopt={"ca_certs": str(cert.cert)}
    )
    try:
        # the browser way: Sec-WebSocket-Protocol goes both ways (websocket-client lowercases what it got)
        assert ws.getsubprotocol() == token.lower()
        ws.send("hello over wss")
        assert ws.recv() == "hello over wss"
        ws.send_binary(b"\x00\x01\xff")
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY and data == b"\x00\x01\xff"
    finally:
        ws.close()


def test_chat_direct_message_over_ws(nginx_plain: Nginx) -> None:
    alice = chat_client(nginx_plain, "nginx-alice")  # type: ignore[arg-type]
    bob = chat_client(nginx_plain, "nginx-bob")  # type: ignore[arg-type]
    try:
        alice.send(json.dumps({"type": "direct", "to": "nginx-bob", "data": {"hi": 1}, "id": "m1"}))
        got = recv_until(bob, lambda m: m["type"] == "direct")
        assert got["from"] == "nginx-alice" and got["to"] == "nginx-bob" and got["data"] == {"hi": 1}
        ack = recv_until(alice, lambda m: m["type"] == "ack")
        assert ack == {"type": "ack", "id": "m1", "delivered": 1}
    finally:
        alice.close()
        bob.close()


def test_http_broadcast_through_nginx_reaches_websocket_clients(
    nginx_plain: Nginx, nginx_tls: Nginx, cert: Cert
) -> None:
    listener = chat_client(nginx_plain, "nginx-listener")  # type: ignore[arg-type]
    admin = make_token("nginx-admin", admin=True)
    try:
        res = http(nginx_plain.url, "POST", "/api/broadcast", {"data": "via http"}, token=admin)
        assert res.status == 200 and res.body["delivered"] >= 1
        got = recv_until(listener, lambda m: m["type"] == "broadcast" and m["data"] == "via http")
        assert got["from"] == "nginx-admin"

        body = json.dumps({"data": "via https"}).encode()
        headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
        status, _, payload = request(nginx_tls.https_port, "POST", "/api/broadcast", headers, body, cert)
        assert status == 200 and json.loads(payload)["delivered"] >= 1
        recv_until(listener, lambda m: m["type"] == "broadcast" and m["data"] == "via https")
    finally:
        listener.close()


def test_origin_rules_hold_behind_nginx(nginx_plain: Nginx, backend: Server) -> None:
    token = make_token("nginx-origin")
    auth = f"Bearer {token}"
    port = nginx_plain.http_port
    same = {"Origin": f"http://127.0.0.1:{port}", "Sec-WebSocket-Protocol": token}
    status, headers, _, sock = raw_handshake(port, "/ws/echo", same)
    sock.close()
    assert status == 101  # same origin: the Origin's host:port equals the Host nginx passed on
    assert headers["sec-websocket-protocol"] == token  # the token as subprotocol, selected back

    for origin in ("http://evil.example.com", f"http://127.0.0.1:{backend.port}"):  # the upstream's port is foreign
        status, headers, body, sock = raw_handshake(port, "/ws/echo", {"Origin": origin, "Authorization": auth})
        sock.close()
        assert status == 403, origin
        assert json.loads(body)["error"] == "origin_not_allowed"
        assert "upgrade" not in headers


def test_origin_rules_hold_behind_nginx_over_wss(nginx_tls: Nginx, cert: Cert) -> None:
    token = make_token("nginx-origin-tls")
    sslopt = {"ca_certs": str(cert.cert)}
    url = nginx_tls.wss_url + "/ws/echo"
    ws = websocket.create_connection(
        url,
        timeout=10,
        header=[f"Authorization: Bearer {token}"],
        sslopt=sslopt,
        origin=f"https://127.0.0.1:{nginx_tls.https_port}",
    )
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(
            url,
            timeout=10,
            header=[f"Authorization: Bearer {token}"],
            sslopt=sslopt,
            origin="https://evil.example.com",
        )
    assert exc.value.status_code == 403
    assert exc.value.resp_body is not None and json.loads(exc.value.resp_body)["error"] == "origin_not_allowed"


def test_client_address_comes_from_x_forwarded_for(nginx_plain: Nginx, backend: Server) -> None:
    """nginx (on 127.0.0.1, a trusted proxy) appends the client's address; a forged entry is ignored."""
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))  # a client address distinct from nginx's own 127.0.0.1
    sock.settimeout(10)
    sock.connect(("127.0.0.1", nginx_plain.http_port))
    ws = websocket.create_connection(
        nginx_plain.ws_url + "/ws/chat",
        socket=sock,
        timeout=10,
        header=[f"Authorization: Bearer {make_token('nginx-xff')}", "X-Forwarded-For: 203.0.113.7"],
    )
    try:
        assert recv_json(ws)["type"] == "welcome"
        log = wait_for_log(backend.log, "connect client=nginx-xff ")
        (line,) = [ln for ln in log.splitlines() if "connect client=nginx-xff " in ln]
        assert "addr=127.0.0.2 " in line, line
    finally:
        ws.close()


def test_idle_connection_outlives_the_ping_interval(
    start_server: Callable[..., Server], start_nginx_for: Callable[..., Nginx]
) -> None:
    srv = start_server(WSAPP_PING_INTERVAL="1")
    nginx = start_nginx_for("wsapp.conf", srv.port)
    ws = ws_connect(nginx, "/ws/echo", make_token("nginx-idle"))  # type: ignore[arg-type]
    try:
        time.sleep(3)  # idle through three ping intervals
        ws.send("still here")
        assert ws.recv() == "still here"  # recv answers any ping that arrived meanwhile
    finally:
        ws.close()


def test_pings_and_pongs_pass_through_nginx(
    start_server: Callable[..., Server], start_nginx_for: Callable[..., Nginx]
) -> None:
    """Pings every 0.5 s and each pong due within 2 s: both directions must pass nginx. Six
    pings take 3 s, past the 2.5 s at which a lost first pong would have closed the connection."""
    srv = start_server(WSAPP_PING_INTERVAL="0.5", WSAPP_PING_TIMEOUT="2")
    nginx = start_nginx_for("wsapp.conf", srv.port)
    ws = ws_connect(nginx, "/ws/echo", make_token("nginx-ping"))  # type: ignore[arg-type]
    try:
        ws.settimeout(15)
        for _ in range(6):
            opcode, _ = ws.recv_data(control_frame=True)  # answers each ping with a pong
            assert opcode == websocket.ABNF.OPCODE_PING, opcode
        ws.settimeout(10)
        ws.send("still here")
        assert ws.recv() == "still here"
    finally:
        ws.close()


def test_body_limit_is_one_json_413_at_the_app_limit(nginx_plain: Nginx, backend: Server) -> None:
    admin = make_token("nginx-big", admin=True)
    limit = Settings().max_message_bytes

    def body(size: int) -> bytes:
        raw = json.dumps({"data": ""}).encode()
        return json.dumps({"data": "x" * (size - len(raw))}).encode()

    headers = {"Content-Type": "application/json"}
    at_limit = http(nginx_plain.url, "POST", "/api/broadcast", token=admin, raw=body(limit), headers=headers)
    assert at_limit.status == 200

    refused = '"POST /api/broadcast HTTP/1.1" 413'
    direct = http(backend.url, "POST", "/api/broadcast", token=admin, raw=body(limit + 1), headers=headers)
    assert direct.status == 413
    assert refused in wait_for_log(backend.log, refused)
    over = http(nginx_plain.url, "POST", "/api/broadcast", token=admin, raw=body(limit + 1), headers=headers)
    assert over.status == 413
    assert over.body == direct.body  # nginx refuses with the app's own answer
    assert over.body["error"] == "payload_too_large"
    assert over.headers["Content-Type"].startswith("application/json")
    # the refusal through nginx never reached gunicorn: a later request is logged, no second 413
    assert http(nginx_plain.url, "GET", "/healthz", headers={"User-Agent": "after-the-413"}).status == 200
    assert wait_for_log(backend.log, "after-the-413").count(refused) == 1


def test_query_token_is_not_in_the_access_log(nginx_plain: Nginx) -> None:
    token = make_token("nginx-query")
    ws = websocket.create_connection(f"{nginx_plain.ws_url}/ws/echo?token={token}", timeout=10)
    ws.send("q")
    assert ws.recv() == "q"
    ws.close()
    log = wait_for_log(nginx_plain.access_log, '"GET /ws/echo HTTP/1.1" 101')
    assert '"GET /ws/echo HTTP/1.1" 101' in log
    assert token not in log and "token=" not in log


def test_http_redirects_to_https(nginx_tls: Nginx, cert: Cert) -> None:
    status, headers, _ = request(nginx_tls.http_port, "GET", "/healthz?x=1", {"Host": "127.0.0.1"})
    assert status == 301
    assert headers["location"] == "https://127.0.0.1/healthz?x=1"
    status, _, payload = request(nginx_tls.https_port, "GET", "/healthz", cert=cert)
    assert status == 200 and json.loads(payload) == {"status": "ok"}


# --- the headers nginx sends upstream, seen by a recording server ------------------------------


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # nginx keeps upstream connections alive

    def do_GET(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler's naming)
        payload = json.dumps(
            {"version": self.request_version, "headers": {k.lower(): v for k, v in self.headers.items()}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def recorder() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("tls", [False, True], ids=["wsapp.conf", "wsapp-tls.conf"])
def test_forwarded_headers(tls: bool, recorder: int, start_nginx_for: Callable[..., Nginx], cert: Cert) -> None:
    nginx = start_nginx_for("wsapp-tls.conf" if tls else "wsapp.conf", recorder, cert if tls else None)
    port, scheme, ca = (nginx.https_port, "https", cert) if tls else (nginx.http_port, "http", None)
    host = f"127.0.0.1:{port}"

    def seen(path: str, headers: dict[str, str]) -> dict[str, Any]:
        status, _, payload = request(port, "GET", path, {"Host": host, **headers}, cert=ca)
        assert status == 200
        return json.loads(payload)  # type: ignore[no-any-return]

    api = seen("/api/clients", {"X-Forwarded-For": "203.0.113.7"})
    assert api["version"] == "HTTP/1.1"
    assert api["headers"]["host"] == host  # unchanged, port included
    assert api["headers"]["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"  # appended, not replaced
    assert api["headers"]["x-forwarded-proto"] == scheme
    assert "connection" not in api["headers"]  # keepalive to the upstream
    assert "upgrade" not in api["headers"]

    ws = seen("/ws/echo", {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"})
    assert ws["version"] == "HTTP/1.1"
    assert ws["headers"]["upgrade"] == "websocket"
    assert ws["headers"]["connection"] == "upgrade"
    assert ws["headers"]["host"] == host
    assert ws["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert ws["headers"]["x-forwarded-proto"] == scheme
    assert ws["headers"]["sec-websocket-version"] == "13"


# --- IPv6, Debian's default site, the demo token route ------------------------------------------


def _connect_v6(port: int, cert: Cert | None = None) -> socket.socket:
    """A TCP (or TLS, for "localhost") connection from ::1, as a browser opening http://localhost/ may make."""
    sock = socket.create_connection(("::1", port), timeout=10)
    return tls_context(cert).wrap_socket(sock, server_hostname="localhost") if cert else sock


def _get_v6(port: int, path: str, host: str, cert: Cert | None = None) -> tuple[int, dict[str, str], bytes]:
    sock = _connect_v6(port, cert)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _echo_over_v6(port: int, host: str, cert: Cert | None = None) -> None:
    scheme = "wss" if cert else "ws"
    ws = websocket.create_connection(
        f"{scheme}://{host}/ws/echo",
        socket=_connect_v6(port, cert),
        timeout=10,
        header=[f"Authorization: Bearer {make_token('nginx-v6')}"],
    )
    try:
        ws.send("over ::1")
        assert ws.recv() == "over ::1"
    finally:
        ws.close()


def test_a_client_on_ipv6_reaches_the_app_next_to_debians_default_site(
    backend: Server, start_nginx_for: Callable[..., Nginx]
) -> None:
    """The README's "Behind nginx" followed literally on Debian: conf.d/wsapp.conf with
    server_name localhost, Debian's default site still enabled, a browser on ::1."""
    nginx = start_nginx_for("wsapp.conf", backend.port, server_name="localhost", debian_default=True)
    host = f"localhost:{nginx.http_port}"
    for get in (
        lambda: _get_v6(nginx.http_port, "/healthz", host),
        lambda: request(nginx.http_port, "GET", "/healthz", {"Host": host}),
    ):
        status, _, body = get()
        assert (status, json.loads(body)) == (200, {"status": "ok"}), body
    _echo_over_v6(nginx.http_port, host)
    assert "::1 - " in wait_for_log(nginx.access_log, "::1 - ")
    # any other name still goes to Debian's default site: docs/deployment.md says what to do
    status, _, body = _get_v6(nginx.http_port, "/healthz", f"other.example:{nginx.http_port}")
    assert status == 200 and b"Welcome to nginx!" in body


def test_a_client_on_ipv6_reaches_the_app_over_tls(
    backend: Server, cert: Cert, start_nginx_for: Callable[..., Nginx]
) -> None:
    nginx = start_nginx_for("wsapp-tls.conf", backend.port, cert, server_name="localhost", debian_default=True)
    status, headers, _ = _get_v6(nginx.http_port, "/healthz", "localhost")
    assert (status, headers["location"]) == (301, "https://localhost/healthz")
    status, _, body = _get_v6(nginx.https_port, "/healthz", f"localhost:{nginx.https_port}", cert)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    _echo_over_v6(nginx.https_port, f"localhost:{nginx.https_port}", cert)


@pytest.mark.parametrize("tls", [False, True], ids=["wsapp.conf", "wsapp-tls.conf"])
def test_the_demo_token_route_is_never_published(
    tls: bool, cert: Cert, start_server: Callable[..., Server], start_nginx_for: Callable[..., Nginx]
) -> None:
    srv = start_server(WSAPP_DEMO_TOKENS="1")  # the app itself would mint one
    body = json.dumps({"client_id": "outsider", "admin": True}).encode()
    headers = {"Content-Type": "application/json"}
    assert http(srv.url, "POST", "/api/demo/token", {"client_id": "outsider"}).status == 200
    nginx = start_nginx_for("wsapp-tls.conf" if tls else "wsapp.conf", srv.port, cert if tls else None)
    port = nginx.https_port if tls else nginx.http_port
    for method in ("POST", "GET"):
        status, answer_headers, payload = request(port, method, "/api/demo/token", headers, body, cert if tls else None)
        assert status == 404, payload
        assert json.loads(payload) == {"error": "not_found", "message": "no such route"}
        assert answer_headers["content-type"].startswith("application/json")
    # never reached the app through nginx: a later request is logged, and only the direct call before it
    assert request(port, "GET", "/healthz", {"User-Agent": "after-the-404"}, cert=cert if tls else None)[0] == 200
    assert wait_for_log(srv.log, "after-the-404").count("/api/demo/token") == 1


# --- the terminal client over wss:// ------------------------------------------------------------


def _client(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WSAPP_TOKEN", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "wsapp.client", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_client_trusts_a_private_certificate_with_cacert(nginx_tls: Nginx, cert: Cert) -> None:
    url = nginx_tls.wss_url + "/ws/echo"
    done = _client(url, "--token", make_token("client-cacert"), "--cacert", str(cert.cert), stdin="over wss\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["< over wss"]
    assert f"* connected to {url}" in done.stderr


def test_client_refuses_an_unknown_certificate_and_says_what_to_do(
    nginx_tls: Nginx, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = nginx_tls.wss_url + "/ws/echo"
    for extra in ([], ["--cacert", str(make_cert(tmp_path_factory.mktemp("other-ca")).cert)]):
        done = _client(url, "--token", make_token("client-untrusted"), *extra, stdin="never sent\n")
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(f"error: cannot connect to {url}: ") and "--cacert FILE" in done.stderr
        assert "certificate" in done.stderr and done.stdout == ""


def test_client_insecure_skips_the_check(nginx_tls: Nginx) -> None:
    url = nginx_tls.wss_url + "/ws/echo"
    done = _client(url, "--token", make_token("client-insecure"), "--insecure", stdin="unchecked\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["< unchecked"]

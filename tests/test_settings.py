"""Settings: defaults, validation naming each variable, the README table, and every entry
point (gunicorn, `flask --app app token`, `python -m wsapp.settings`) stopping on a bad
setting with one line per problem and exit status 2, never a traceback."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import SECRET, Server, http
from wsapp.settings import LOG_LEVELS, OPTIONS, Settings, SettingsError, markdown_table

ROOT = Path(__file__).resolve().parent.parent
KEY = {"WSAPP_JWT_SECRET": SECRET}  # the smallest valid environment


def _public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env(KEY)
    assert (s.max_connections_per_client, s.max_connections, s.max_message_bytes) == (10, 10000, 65536)
    assert (s.rate_limit, s.rate_burst, s.send_queue) == (50, 100, 256)
    assert (s.ping_interval_s, s.ping_timeout_s, s.shutdown_timeout_s) == (25, 20, 10)
    assert s.compression is False and s.workers == 1 and not s.demo_mode and not s.demo
    assert s.jwt_algorithms == ("HS256",) and s.jwt_client_id_claim == "sub"
    assert s.log_level == "INFO"


def test_every_problem_is_reported_naming_its_variable() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {
                **KEY,
                "WSAPP_PORT": "http",
                "WSAPP_SEND_QUEUE": "0",
                "WSAPP_COMPRESSION": "maybe",
                "WSAPP_ALLOWED_ORIGINS": "example.com",
            }
        )
    text = str(info.value)
    for name in ("WSAPP_PORT", "WSAPP_SEND_QUEUE", "WSAPP_COMPRESSION", "WSAPP_ALLOWED_ORIGINS"):
        assert name in text
    assert len(info.value.problems) == 4
    assert len(info.value.lines()) == 4 and all("\n" not in line for line in info.value.lines())


def test_more_than_one_worker_needs_redis() -> None:
    with pytest.raises(SettingsError, match="WSAPP_WORKERS.*WSAPP_REDIS_URL"):
        Settings.from_env({**KEY, "WSAPP_WORKERS": "2"})
    assert Settings.from_env({**KEY, "WSAPP_WORKERS": "2", "WSAPP_REDIS_URL": "redis://127.0.0.1:6379/0"}).workers == 2


def test_key_rules() -> None:
    with pytest.raises(SettingsError, match="WSAPP_JWT_SECRET"):
        Settings.from_env({"WSAPP_JWT_SECRET": "short"})
    with pytest.raises(SettingsError, match="WSAPP_JWT_ALGORITHMS"):
        Settings.from_env({"WSAPP_JWT_SECRET": "x" * 32, "WSAPP_JWT_ALGORITHMS": "none"})
    with pytest.raises(SettingsError, match="WSAPP_JWT_ALGORITHMS"):
        Settings.from_env({"WSAPP_JWT_SECRET": "x" * 32, "WSAPP_JWT_ALGORITHMS": "RS256"})
    assert Settings.from_env({"WSAPP_JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32


# --- demo mode only when asked for -------------------------------------------------------------


def test_without_a_key_start_up_is_refused_unless_demo_mode_is_asked_for() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({})
    (problem,) = info.value.problems
    for name in ("WSAPP_JWT_SECRET", "WSAPP_JWT_PUBLIC_KEY", "WSAPP_DEMO=1"):
        assert name in problem
    with pytest.raises(SettingsError):
        Settings.from_env({"WSAPP_DEMO": "0"})
    demo = Settings.from_env({"WSAPP_DEMO": "1"})
    assert demo.demo and demo.demo_mode


@pytest.mark.parametrize(
    ("env", "demo_mode"),
    [
        ({"WSAPP_DEMO": "1"}, True),
        ({"WSAPP_DEMO": "yes"}, True),
        (KEY, False),
        ({"WSAPP_JWT_SECRET": SECRET, "WSAPP_DEMO_TOKENS": "1"}, False),
        ({"WSAPP_JWT_PUBLIC_KEY": "PEM"}, False),
    ],
)
def test_demo_mode_is_true_only_when_asked_for_and_no_key_is_set(env: dict[str, str], demo_mode: bool) -> None:
    if env.get("WSAPP_JWT_PUBLIC_KEY") == "PEM":
        env = {"WSAPP_JWT_PUBLIC_KEY": _public_pem()}
    assert Settings.from_env(env).demo_mode is demo_mode


@pytest.mark.parametrize(
    ("settings", "demo_mode"),
    [
        (Settings(), False),  # no key and not asked for: not demo mode (from_env refuses it)
        (Settings(demo=True), True),
        (Settings(demo=True, jwt_secret=SECRET), False),  # the generated secret is set: demo is done
        (Settings(demo=True, jwt_public_key="PEM"), False),
    ],
)
def test_demo_mode_property(settings: Settings, demo_mode: bool) -> None:
    assert settings.demo_mode is demo_mode


def test_demo_mode_next_to_a_key_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^WSAPP_DEMO=1: .*WSAPP_JWT_SECRET is set"):
        Settings.from_env({**KEY, "WSAPP_DEMO": "1"})
    with pytest.raises(SettingsError, match=r"^WSAPP_DEMO=1: .*WSAPP_JWT_PUBLIC_KEY is set"):
        Settings.from_env({"WSAPP_JWT_PUBLIC_KEY": _public_pem(), "WSAPP_DEMO": "1"})


def test_demo_tokens_next_to_a_public_key_is_refused() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"WSAPP_JWT_PUBLIC_KEY": _public_pem(), "WSAPP_DEMO_TOKENS": "1"})
    (problem,) = info.value.problems
    assert problem.startswith("WSAPP_DEMO_TOKENS=1: ") and "WSAPP_JWT_PUBLIC_KEY" in problem
    assert Settings.from_env({"WSAPP_JWT_PUBLIC_KEY": _public_pem()}).demo_tokens is False


# --- safe defaults and the log level -----------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("10.0.0.1", False), ("192.168.1.2", False)]
    + [("172.16.0.1", False), ("::ffff:10.0.0.1", False), ("fd00::1", False), ("203.0.113.7", False)],
)
def test_metrics_are_served_to_loopback_only_by_default(address: str, allowed: bool) -> None:
    networks = Settings.from_env(KEY).metrics_allow
    ip = ipaddress.ip_address(address)
    assert any(ip in net for net in networks) is allowed


def test_metrics_default_refuses_a_private_address_on_a_real_server() -> None:
    """Behind a trusted proxy (127.0.0.1 is one by default), a client on 10.x is not let in."""
    srv = Server().start()
    try:
        private = http(srv.url, "GET", "/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
        assert (private.status, private.body["error"]) == (403, "forbidden")
        assert http(srv.url, "GET", "/metrics").status == 200  # the test itself is on loopback
    finally:
        srv.stop()


@pytest.mark.parametrize("raw", ["debug", "Info", "WARNING", " error ", "critical"])
def test_log_level_accepts_the_five_levels_in_any_case(raw: str) -> None:
    level = Settings.from_env({**KEY, "WSAPP_LOG_LEVEL": raw}).log_level
    assert level == raw.strip().upper() and level in LOG_LEVELS


@pytest.mark.parametrize("raw", ["loud", "", "warn", "TRACE", "10", "INFO,DEBUG"])
def test_log_level_refuses_anything_else_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**KEY, "WSAPP_LOG_LEVEL": raw})
    assert info.value.problems == [
        f"WSAPP_LOG_LEVEL={raw!r}: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)"
    ]


def test_rate_burst_defaults_to_twice_the_rate() -> None:
    assert Settings.from_env({**KEY, "WSAPP_RATE_LIMIT": "7"}).rate_burst == 14
    assert Settings.from_env({**KEY, "WSAPP_RATE_LIMIT": "7", "WSAPP_RATE_BURST": "3"}).rate_burst == 3


def test_every_option_names_a_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert {o.field for o in OPTIONS} <= fields


def test_readme_settings_table_is_generated_from_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: python -m wsapp.settings --table"


# --- every entry point: one line per problem, exit status 2 ------------------------------------

BAD = {
    "log level": ({**KEY, "WSAPP_LOG_LEVEL": "loud"}, ["WSAPP_LOG_LEVEL='loud': must be one of DEBUG"]),
    "ping interval": ({**KEY, "WSAPP_PING_INTERVAL": "abc"}, ["WSAPP_PING_INTERVAL='abc': must be a number"]),
    "no key": ({}, ["WSAPP_JWT_SECRET / WSAPP_JWT_PUBLIC_KEY: neither is set"]),
    "demo tokens with a public key": (
        {"WSAPP_JWT_PUBLIC_KEY": _public_pem(), "WSAPP_DEMO_TOKENS": "1"},
        ["WSAPP_DEMO_TOKENS=1: tokens cannot be minted with WSAPP_JWT_PUBLIC_KEY"],
    ),
    "two at once": (
        {**KEY, "WSAPP_PORT": "http", "WSAPP_DEMO": "maybe"},
        ["WSAPP_PORT='http': must be a whole number", "WSAPP_DEMO='maybe': must be 1 or 0"],
    ),
}
ENTRY_POINTS = {
    "python -m wsapp.settings": [sys.executable, "-m", "wsapp.settings"],
    "flask --app app token": [sys.executable, "-m", "flask", "--app", "app", "token", "alice"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
    full = {**base, "WSAPP_HOST": "127.0.0.1", "WSAPP_PORT": "0", **env}
    return subprocess.run(argv, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_setting_is_one_line_per_problem_and_exit_2(entry: str, case: str) -> None:
    env, expected = BAD[case]
    done = _run(ENTRY_POINTS[entry], env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == len(expected), done.stderr
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(f"wsapp: invalid setting {start}"), line


def test_settings_module_prints_the_table_only_when_the_environment_is_valid() -> None:
    good = _run([sys.executable, "-m", "wsapp.settings"], KEY)
    assert (good.returncode, good.stdout, good.stderr) == (0, markdown_table() + "\n", "")
    # --table (what regenerates the README) prints it whatever the environment holds
    table = _run([sys.executable, "-m", "wsapp.settings", "--table"], {"WSAPP_PORT": "http"})
    assert (table.returncode, table.stdout) == (0, markdown_table() + "\n")


def test_token_command_works_with_a_valid_environment() -> None:
    done = _run(ENTRY_POINTS["flask --app app token"], KEY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2 and len(done.stdout.splitlines()) == 1  # one JWT


def test_settings_made_in_code_default_to_the_catalogue() -> None:
    """`Settings(...)` (an app or a test building its own) and the environment's defaults
    are one set of defaults: every field the catalogue sets agrees."""
    from_env = Settings.from_env({"WSAPP_JWT_SECRET": "s" * 32})
    in_code = Settings(jwt_secret="s" * 32)
    differ = {f.name for f in dataclasses.fields(Settings) if getattr(from_env, f.name) != getattr(in_code, f.name)}
    assert differ == set()

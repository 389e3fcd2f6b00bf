"""Settings: defaults, validation naming each variable, and the README table."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsapp.settings import OPTIONS, Settings, SettingsError, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.max_connections_per_client, s.max_connections, s.max_message_bytes) == (10, 10000, 65536)
    assert (s.rate_limit, s.rate_burst, s.send_queue) == (50, 100, 256)
    assert (s.ping_interval_s, s.ping_timeout_s, s.shutdown_timeout_s) == (25, 20, 10)
    assert s.compression is False and s.workers == 1 and s.demo_mode
    assert s.jwt_algorithms == ("HS256",) and s.jwt_client_id_claim == "sub"


def test_every_problem_is_reported_naming_its_variable() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {
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


def test_more_than_one_worker_needs_redis() -> None:
    with pytest.raises(SettingsError, match="WSAPP_WORKERS.*WSAPP_REDIS_URL"):
        Settings.from_env({"WSAPP_WORKERS": "2"})
    assert Settings.from_env({"WSAPP_WORKERS": "2", "WSAPP_REDIS_URL": "redis://127.0.0.1:6379/0"}).workers == 2


def test_key_rules() -> None:
    with pytest.raises(SettingsError, match="WSAPP_JWT_SECRET"):
        Settings.from_env({"WSAPP_JWT_SECRET": "short"})
    with pytest.raises(SettingsError, match="WSAPP_JWT_ALGORITHMS"):
        Settings.from_env({"WSAPP_JWT_SECRET": "x" * 32, "WSAPP_JWT_ALGORITHMS": "none"})
    with pytest.raises(SettingsError, match="WSAPP_JWT_ALGORITHMS"):
        Settings.from_env({"WSAPP_JWT_SECRET": "x" * 32, "WSAPP_JWT_ALGORITHMS": "RS256"})


def test_rate_burst_defaults_to_twice_the_rate() -> None:
    assert Settings.from_env({"WSAPP_RATE_LIMIT": "7"}).rate_burst == 14
    assert Settings.from_env({"WSAPP_RATE_LIMIT": "7", "WSAPP_RATE_BURST": "3"}).rate_burst == 3


def test_every_option_names_a_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert {o.field for o in OPTIONS} <= fields


def test_readme_settings_table_is_generated_from_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: python -m wsapp.settings"

"""Admin tokens: settings validation, roles, and when the server may start at all."""

from __future__ import annotations

import re

import pytest

from actors.settings import DEFAULT_SENSITIVE_FIELDS, Settings, SettingsError
from ops.admin.errors import ApiError
from ops.admin.security import READ_ONLY, READ_WRITE, CannotServe, TokenAuthority, check_can_serve

WRITER, READER = "w" * 16 + "-writer", "r" * 16 + "-reader"


def settings(**environ: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": "sqlite:///:memory:", **environ})


def test_admin_settings_defaults() -> None:
    loaded = settings()
    assert (loaded.admin_tokens, loaded.admin_readonly_tokens, loaded.admin_bind, loaded.admin_port) == (
        (),
        (),
        "127.0.0.1",
        8080,
    )
    assert (loaded.admin_requeue_max_per_call, loaded.admin_requeue_per_minute) == (100, 300)
    assert loaded.sensitive_fields == DEFAULT_SENSITIVE_FIELDS and "email" in loaded.sensitive_fields


def test_tokens_are_read_as_comma_separated_lists() -> None:
    loaded = settings(ADMIN_TOKENS=f" {WRITER} , {WRITER}2 ", ADMIN_READONLY_TOKENS=READER)
    assert loaded.admin_tokens == (WRITER, f"{WRITER}2") and loaded.admin_readonly_tokens == (READER,)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ADMIN_TOKENS": "short"}, "ADMIN_TOKENS: token 1 is not a usable bearer token; use at least 16"),
        ({"ADMIN_READONLY_TOKENS": f"{READER},with a space in it ok"}, "ADMIN_READONLY_TOKENS: token 2"),
        ({"ADMIN_TOKENS": WRITER, "ADMIN_READONLY_TOKENS": WRITER}, "both ADMIN_TOKENS and ADMIN_READONLY_TOKENS"),
        ({"ADMIN_PORT": "70000"}, "ADMIN_PORT=70000 is out of range"),
        ({"SENSITIVE_FIELDS": " , "}, "SENSITIVE_FIELDS is empty"),
    ],
)
def test_bad_admin_settings_are_refused_with_advice(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(**environ)


def test_sensitive_fields_are_lowercased_and_deduplicated() -> None:
    assert settings(SENSITIVE_FIELDS="Email, SSN,email").sensitive_fields == ("email", "ssn")


def test_each_token_gets_its_role_and_anything_else_is_refused() -> None:
    authority = TokenAuthority(read_write=(WRITER,), read_only=(READER,))
    assert authority.caller(WRITER).role == READ_WRITE
    assert authority.caller(READER).role == READ_ONLY
    assert authority.caller(WRITER).fingerprint != authority.caller(READER).fingerprint
    assert WRITER not in authority.caller(WRITER).fingerprint
    for presented, code in (
        (None, "unauthenticated"),
        ("", "unauthenticated"),
        (WRITER + "x", "invalid_token"),
        (WRITER[:-1], "invalid_token"),
        ("é" * 20, "invalid_token"),
    ):
        with pytest.raises(ApiError) as refused:
            authority.caller(presented)
        assert (refused.value.status, refused.value.code) == (401, code)


def test_dev_mode_opens_the_api_only_when_no_token_is_configured() -> None:
    assert TokenAuthority(read_write=(), read_only=(), open_access=True).caller(None).role == READ_WRITE
    with pytest.raises(ApiError):
        TokenAuthority(read_write=(WRITER,), read_only=(), open_access=True).caller(None)


def test_the_server_starts_without_tokens_only_in_dev_mode_on_loopback() -> None:
    check_can_serve(tokens=1, bind="0.0.0.0", dev=False)
    check_can_serve(tokens=0, bind="127.0.0.1", dev=True)
    with pytest.raises(CannotServe, match="no admin token is configured: set ADMIN_TOKENS"):
        check_can_serve(tokens=0, bind="127.0.0.1", dev=False)
    with pytest.raises(CannotServe, match=re.escape("only on 127.0.0.1, not on 0.0.0.0")):
        check_can_serve(tokens=0, bind="0.0.0.0", dev=True)

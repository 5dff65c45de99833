"""Redaction of sensitive payload values: nested, case-insensitive, positional by parameter name."""

from __future__ import annotations

from middleware.redaction import REDACTED, redact, redact_message

FIELDS = ("email", "token", "password")


def test_sensitive_keys_are_redacted_at_any_depth_and_in_any_case() -> None:
    value = {
        "Email": "ops@example.com",
        "profile": {"api_token": "t-123", "name": "Ada", "contacts": [{"EMAIL": "a@example.com", "kind": "work"}]},
        "ids": [1, 2],
        "Password": {"nested": "whole value goes"},
    }
    assert redact(value, FIELDS) == {
        "Email": REDACTED,
        "profile": {"api_token": REDACTED, "name": "Ada", "contacts": [{"EMAIL": REDACTED, "kind": "work"}]},
        "ids": [1, 2],
        "Password": REDACTED,
    }


def test_redaction_leaves_the_input_unchanged() -> None:
    value = {"token": "secret", "items": [{"password": "p"}]}
    redact(value, FIELDS)
    assert value == {"token": "secret", "items": [{"password": "p"}]}


def test_a_message_payload_is_redacted_in_args_kwargs_and_options_by_parameter_name() -> None:
    payload = {
        "queue_name": "mail",
        "actor_name": "send_email",
        "args": ["ops@example.com", {"subject": "Hi", "reset_token": "r-1"}, 3],
        "kwargs": {"password": "hunter2", "retries": 2},
        "options": {"callback_token": "c-1", "max_retries": 3},
        "message_id": "m-1",
    }
    redacted = redact_message(payload, FIELDS, parameter_names=("email_address", "body", "priority"))
    assert redacted == {
        "queue_name": "mail",
        "actor_name": "send_email",
        "args": [REDACTED, {"subject": "Hi", "reset_token": REDACTED}, 3],
        "kwargs": {"password": REDACTED, "retries": 2},
        "options": {"callback_token": REDACTED, "max_retries": 3},
        "message_id": "m-1",
    }


def test_without_parameter_names_positional_strings_are_kept_and_their_dicts_redacted() -> None:
    redacted = redact_message({"args": ["ops@example.com", {"token": "t"}], "kwargs": {}}, FIELDS)
    assert redacted["args"] == ["ops@example.com", {"token": REDACTED}]

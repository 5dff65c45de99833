"""Redaction of sensitive payload values: nested, case-insensitive, positional by parameter name."""

from __future__ import annotations

from middleware.policies.redaction import REDACTED, redact, redact_message, scrub, scrub_deep, sensitive_values

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


def test_free_text_is_scrubbed_of_the_sensitive_values_the_payload_holds() -> None:
    payload = {"args": ["ada@example.com", 42, {"card_token": "tok_live_9f8e"}], "kwargs": {"note": "hello"}}
    values = sensitive_values(payload, FIELDS, parameter_names=("email", "account", "card"))
    assert values == {"ada@example.com", "tok_live_9f8e"}
    text = "refused 'ada@example.com' for account 42 (token tok_live_9f8e); hello"
    assert scrub(text, values) == f"refused '{REDACTED}' for account 42 (token {REDACTED}); hello"
    assert scrub(None, values) is None
    assert scrub_deep({"options": {"traceback": text}, "n": [1]}, values) == {
        "options": {"traceback": scrub(text, values)},
        "n": [1],
    }

"""Redaction of sensitive values in job payloads, before anyone is shown them.

Pure functions: the admin API applies them to every payload it returns, and error reporting
can apply them to what it sends. A key is sensitive when, lowercased, it contains one of the
configured fields (``SENSITIVE_FIELDS``): with ``token``, ``api_token`` and ``X-Token`` are
redacted too. Positional arguments have no key, so they are matched by the actor's parameter
names when the caller knows them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

REDACTED = "[redacted]"


def is_sensitive(key: str, sensitive_fields: Collection[str]) -> bool:
    lowered = key.lower()
    return any(field.lower() in lowered for field in sensitive_fields)


def redact(value: Any, sensitive_fields: Collection[str]) -> Any:
    """A copy of ``value`` with the value of every sensitive key, at any depth, replaced."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and is_sensitive(key, sensitive_fields)
            else redact(item, sensitive_fields)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, sensitive_fields) for item in value]
    return value


def redact_message(
    payload: Mapping[str, Any], sensitive_fields: Collection[str], *, parameter_names: Sequence[str] = ()
) -> dict[str, Any]:
    """A Dramatiq message payload with its ``args``, ``kwargs`` and ``options`` redacted.

    ``parameter_names`` are the actor's positional parameter names, in order: a positional
    argument whose parameter name is sensitive is redacted whole.
    """
    redacted = dict(payload)
    if isinstance(payload.get("args"), list | tuple):
        redacted["args"] = [
            REDACTED if index < len(parameter_names) and is_sensitive(parameter_names[index], sensitive_fields)
            else redact(argument, sensitive_fields)
            for index, argument in enumerate(payload["args"])
        ]  # fmt: skip
    for part in ("kwargs", "options"):
        if part in payload:
            redacted[part] = redact(payload[part], sensitive_fields)
    return redacted

"""Redaction of sensitive values in job payloads, before anyone is shown them.

Pure functions: the admin API applies them to every payload it returns, and error reporting
can apply them to what it sends. A key is sensitive when, lowercased, it contains one of the
configured fields (``SENSITIVE_FIELDS``): with ``token``, ``api_token`` and ``X-Token`` are
redacted too. Positional arguments have no key, so they are matched by the actor's parameter
names when the caller knows them.

Free text (an error message, a traceback) often repeats an argument, as in ``refused
'ada@example.com'``: :func:`sensitive_values` collects the strings a payload holds under
sensitive keys, and :func:`scrub` replaces them in such text.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound

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


def sensitive_values(
    payload: Mapping[str, Any], sensitive_fields: Collection[str], *, parameter_names: Sequence[str] = ()
) -> set[str]:
    """Every string (of 4 characters or more) held under a sensitive key or positional parameter of a payload."""
    found: set[str] = set()
    args = payload.get("args")
    arguments = args if isinstance(args, list | tuple) else ()
    for index, argument in enumerate(arguments):
        sensitive = index < len(parameter_names) and is_sensitive(parameter_names[index], sensitive_fields)
        _collect(argument, sensitive_fields, found, sensitive=sensitive)
    for part in ("kwargs", "options"):
        _collect(payload.get(part), sensitive_fields, found, sensitive=False)
    return found


def scrub(text: str | None, values: Collection[str]) -> str | None:
    """``text`` with each of ``values`` replaced, longest first (so a value inside another goes too)."""
    if not text:
        return text
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def scrub_deep(value: Any, values: Collection[str]) -> Any:
    """A copy of ``value`` with :func:`scrub` applied to every string in it (a traceback kept in the options)."""
    if isinstance(value, str):
        return scrub(value, values)
    if isinstance(value, Mapping):
        return {key: scrub_deep(item, values) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_deep(item, values) for item in value]
    return value


def _collect(value: Any, sensitive_fields: Collection[str], found: set[str], *, sensitive: bool) -> None:
    if isinstance(value, str):
        if sensitive and len(value) >= 4:  # shorter ones would scrub ordinary words and numbers
            found.add(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _collect(
                item,
                sensitive_fields,
                found,
                sensitive=sensitive or (isinstance(key, str) and is_sensitive(key, sensitive_fields)),
            )
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, sensitive_fields, found, sensitive=sensitive)


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
            REDACTED
            if index < len(parameter_names) and is_sensitive(parameter_names[index], sensitive_fields)
            else redact(argument, sensitive_fields)
            for index, argument in enumerate(payload["args"])
        ]
    for part in ("kwargs", "options"):
        if part in payload:
            redacted[part] = redact(payload[part], sensitive_fields)
    return redacted


def positional_parameter_names(broker: dramatiq.Broker, actor_name: str) -> tuple[str, ...]:
    """The actor's positional parameter names, so positional arguments can be redacted by name
    (none for an actor this process does not know)."""
    try:
        function = broker.get_actor(actor_name).fn
    except ActorNotFound:
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(
        parameter.name for parameter in inspect.signature(function).parameters.values() if parameter.kind in kinds
    )

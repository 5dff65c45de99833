"""Each setting is declared once, in ``actors/settings.py`` (its variable, default and bounds), and the
configuration reference (``docs/pages/configuration.md``) is generated from that declaration."""

from __future__ import annotations

import os
from dataclasses import MISSING, fields
from pathlib import Path

from actors.settings import Settings, configuration_reference, variable_names
from tests import harness

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "pages" / "configuration.md"


def test_every_field_is_read_from_one_variable_of_its_own() -> None:
    names = variable_names()
    assert len(names) == len(fields(Settings)) == len(set(names))


def test_without_variables_every_setting_is_its_declared_default(tmp_path: Path) -> None:
    settings = Settings.from_env({"STATE_DIR": str(tmp_path)})
    for each in fields(Settings):
        if each.default is not MISSING:
            assert getattr(settings, each.name) == each.default, each.name


def test_the_configuration_reference_is_generated_from_the_declarations() -> None:
    generated = configuration_reference()
    if os.environ.get("UPDATE_DOCS"):
        REFERENCE.write_text(generated)
    assert REFERENCE.read_text() == generated, "docs/pages/configuration.md is stale: run this test with UPDATE_DOCS=1"
    for name in variable_names():
        assert f"| `{name}` |" in generated


def test_the_test_harness_clears_every_setting_from_the_environment_it_passes_on() -> None:
    assert set(variable_names()) == harness._SYSTEM_SETTINGS

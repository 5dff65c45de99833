from __future__ import annotations

from pathlib import Path

import pytest

from actors.settings import Settings, SettingsError


def test_defaults_are_the_embedded_broker_and_sqlite_in_the_state_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"STATE_DIR": str(tmp_path)})
    assert settings.broker_url is None
    assert settings.database_url == f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    assert settings.state_dir == tmp_path
    assert settings.large_threshold_ms == 40 * 60_000
    assert settings.transcription_segment_ms == 30_000


def test_state_dir_defaults_to_var_under_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).state_dir == tmp_path / "var"


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://app:s%40cret@db:5432/jobs"})
    assert settings.database_url == "postgresql+psycopg://app:s%40cret@db:5432/jobs"


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "amqp://guest:guest@localhost:5672/%2F", "unix:///tmp/redis.sock"]
)
def test_broker_urls_of_both_brokers_are_accepted(url: str) -> None:
    assert Settings.from_env({"BROKER_URL": url}).broker_url == url


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BROKER_URL": "localhost:6379"}, r"BROKER_URL='localhost:6379' is not a broker URL. Use redis://"),
        ({"DATABASE_URL": "not a url"}, r"DATABASE_URL='not a url' is not a SQLAlchemy URL"),
        ({"DATABASE_URL": "mysql://db/jobs"}, r"supported databases are PostgreSQL and SQLite"),
        ({"TRANSCRIPTION_SEGMENT_MS": "30s"}, r"TRANSCRIPTION_SEGMENT_MS='30s' is not a whole number"),
        ({"TRANSCRIPTION_SEGMENT_MS": "10"}, r"TRANSCRIPTION_SEGMENT_MS=10 is out of range; it must be at least 1000"),
        ({"REDIS_MAINTENANCE_CHANCE": "2000000"}, r"between 0 and 1000000"),
        ({"TRANSCRIPTION_ENGINE": "whisper"}, r"TRANSCRIPTION_ENGINE='whisper' is not one of: echo, pocketsphinx"),
        ({"LARGE_TIME_LIMIT_MS": "60000"}, r"LARGE_TIME_LIMIT_MS \(60000\) is shorter than REGULAR_TIME_LIMIT_MS"),
        ({"HARD_LIMIT_GRACE_MS": "-1"}, r"HARD_LIMIT_GRACE_MS=-1 is out of range; it must be at least 0"),
        ({"WORKER_MAX_RSS_MB": "-5"}, r"WORKER_MAX_RSS_MB=-5 is out of range; it must be at least 0"),
        ({"MAX_HAND_BACKS_WITHOUT_PROGRESS": "0"}, r"MAX_HAND_BACKS_WITHOUT_PROGRESS=0 is out of range"),
    ],
)
def test_invalid_values_say_what_is_wrong_and_how_to_fix_it(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_underscored_numbers_are_accepted() -> None:
    assert Settings.from_env({"LARGE_THRESHOLD_MS": "2_400_000"}).large_threshold_ms == 2_400_000

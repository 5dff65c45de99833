"""Alembic migrations on SQLite and PostgreSQL, and workers that refuse to run on an old schema."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from actors.schema import required_revisions
from tests import harness
from tests.harness import WorkerProcess, run_ops

[HEAD] = required_revisions()


def test_db_upgrade_creates_the_schema_on_sqlite_and_is_repeatable(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}", "BROKER_URL": harness.REDIS_TEST_URL}
    behind = run_ops(env, "db", "current")
    assert behind.returncode == 1 and "no schema: behind" in behind.stdout

    for _ in range(2):
        result = run_ops(env, "db", "upgrade")
        assert result.returncode == 0, result.stderr
        assert f"Schema is at {HEAD}" in result.stdout
    assert run_ops(env, "db", "current").returncode == 0
    tables = set(inspect(create_engine(env["DATABASE_URL"])).get_table_names())
    assert {
        "job_checkpoints",
        "transcript_segments",
        "job_status",
        "dead_letters",
        "idempotency_keys",
        "alembic_version",
    } <= tables


def test_db_upgrade_creates_the_schema_on_postgresql() -> None:
    name = f"rj_schema_{uuid.uuid4().hex[:8]}"
    url = harness.create_postgres_database(name)
    try:
        result = run_ops({"DATABASE_URL": url, "BROKER_URL": harness.REDIS_TEST_URL}, "db", "upgrade")
        assert result.returncode == 0, result.stderr
        engine = create_engine(url)
        assert {"job_checkpoints", "transcript_segments"} <= set(inspect(engine).get_table_names())
        engine.dispose()
    finally:
        harness.drop_postgres_database(name)


def test_a_worker_on_a_database_without_the_schema_stops_at_boot_with_advice(
    tmp_path: Path, redis_namespace: str
) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        "BROKER_URL": harness.REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
    }
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log")
    assert worker.process.wait(timeout=60) == 2
    worker.stop()
    assert (
        f"worker cannot start: the database has no schema but this code needs schema {HEAD}; "
        "run `python -m ops db upgrade`." in worker.log()
    )


def test_an_invalid_setting_stops_the_worker_with_the_reason_and_no_traceback(tmp_path: Path) -> None:
    env = {"BROKER_URL": "localhost:6379", "STATE_DIR": str(tmp_path)}
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log")
    assert worker.process.wait(timeout=60) == 2
    worker.stop()
    assert "error: BROKER_URL='localhost:6379' is not a broker URL." in worker.log()
    assert "Traceback" not in worker.log()


def test_the_migrations_create_exactly_the_tables_the_code_declares(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import actors  # noqa: F401  (declares every table on the shared metadata)
    import middleware.storage.schedule_state  # noqa: F401  (the scheduler's table; the scheduler imports actors)
    from middleware.storage.database import metadata

    url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    result = run_ops({"DATABASE_URL": url, "BROKER_URL": harness.REDIS_TEST_URL}, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert differences == [], "a table or column in the code has no migration (or the reverse)"


def test_a_database_a_newer_release_upgraded_is_named_as_such_and_nothing_here_touches_it(
    sqlite_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:  # as a release with one more migration would leave it
        connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    env = {"DATABASE_URL": sqlite_url, "BROKER_URL": harness.REDIS_TEST_URL, "REDIS_NAMESPACE": redis_namespace}
    newer = f"the database is at schema 0999, newer than this code (which needs {HEAD}): a newer release upgraded it"

    current = run_ops(env, "db", "current")
    assert (current.returncode, current.stdout.strip()) == (
        1,
        f"Schema is at 0999: newer than this code (which needs {HEAD}).",
    )
    upgrade = run_ops(env, "db", "upgrade")
    assert upgrade.returncode == 1 and f"error: {newer}" in upgrade.stderr
    assert "Traceback" not in upgrade.stderr

    worker = WorkerProcess(env, log_path=tmp_path / "worker.log")
    assert worker.process.wait(timeout=60) == 2
    worker.stop()
    assert f"worker cannot start: {newer}" in worker.log()


def test_an_unknown_target_revision_is_refused_in_one_line(sqlite_url: str) -> None:
    result = run_ops(
        {"DATABASE_URL": sqlite_url, "BROKER_URL": harness.REDIS_TEST_URL}, "db", "upgrade", "--revision", "0042"
    )
    assert (result.returncode, result.stderr.strip()) == (1, "error: Can't locate revision identified by '0042'")

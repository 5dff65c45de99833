"""The PostgreSQL leader lock: one holder per database, free again the moment its session ends."""

from __future__ import annotations

from sqlalchemy import text

from middleware.storage.database import Database
from scheduler.leader import PostgresLeaderLock, current_leader


def test_one_holder_and_a_standby_takes_the_lock_when_the_leaders_session_dies(postgres_url: str, tmp_path) -> None:
    database = Database(postgres_url)
    leader, standby = PostgresLeaderLock(postgres_url, identity="a:1"), PostgresLeaderLock(postgres_url, identity="b:2")
    try:
        assert current_leader(database, state_dir=tmp_path) is None
        assert leader.try_acquire() and not standby.try_acquire()
        assert leader.still_held() and current_leader(database, state_dir=tmp_path) == "a:1"
        # What a dead leader's host, or a database failover, does to its session.
        with database.engine.connect() as connection:
            terminated = connection.scalar(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'scheduler a:1' AND datname = current_database()"
                )
            )
        assert terminated
        assert not leader.still_held()
        assert standby.try_acquire() and current_leader(database, state_dir=tmp_path) == "b:2"
        assert not leader.try_acquire()
    finally:
        leader.release()
        standby.release()
        database.dispose()

"""Tables written by the actors. Apps read transcripts from ``transcript_segments``."""

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text, UniqueConstraint

from middleware.storage.database import metadata

transcript_segments = Table(
    "transcript_segments",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("meeting_id", String(255), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("start_ms", Integer, nullable=False),
    Column("end_ms", Integer, nullable=False),
    Column("text", Text, nullable=False),
    # A segment is stored once: a resumed job can never write an index twice.
    UniqueConstraint("meeting_id", "idx"),
)

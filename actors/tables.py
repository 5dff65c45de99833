"""Tables written by the actors. Apps read transcripts from ``transcript_segments`` and exports from
``transcript_exports``."""

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

#: A meeting's transcript exported as text, one row a page (actors/exports.py): a page is stored
#: once, with the checkpoint that records it, so a resumed export never writes a page twice.
transcript_exports = Table(
    "transcript_exports",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("meeting_id", String(255), nullable=False),
    #: The index of the page's first segment (pages are cut by segment index, so they never shift).
    Column("first_idx", Integer, nullable=False),
    Column("last_idx", Integer, nullable=False),
    Column("content", Text, nullable=False),
    UniqueConstraint("meeting_id", "first_idx"),
)

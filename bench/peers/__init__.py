"""Celery and RQ doing the benchmark's work, run from their own virtual environment (``bench/.venv-peers``)."""

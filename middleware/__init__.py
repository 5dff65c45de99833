"""Dramatiq middleware for long, expensive jobs: one concern per module.

This package imports nothing from ``actors``, ``scheduler`` or ``ops``; they build on it.
"""

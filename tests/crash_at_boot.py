"""A module that ends its worker process at boot, every time: ``dramatiq actors tests.crash_at_boot``.

It exits with code 1 rather than raising an ImportError, which Dramatiq turns into exit code 2 (a
bad start, never restarted): this is a crash that a supervisor restarts, until it is a crash loop.
"""

raise SystemExit(1)

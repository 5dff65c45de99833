"""The peers' virtual environment: Celery and RQ, installed by the benchmark, never project dependencies.

``ensure_peers_environment()`` creates ``bench/.venv-peers`` with pip the first time (about a
minute) and reuses it afterwards; the versions it installed are reported with the results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PEERS_VENV = Path(__file__).resolve().parent.parent / ".venv-peers"
REQUIREMENTS = ["celery[redis]>=5.4,<6", "rq>=2,<4"]


def peers_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def ensure_peers_environment() -> dict[str, str]:
    """Create the environment if it is missing or incomplete; return {package: version}."""
    python = peers_python()
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    versions = _versions(python)
    if versions is None:
        print("bench: installing Celery and RQ into bench/.venv-peers (once) ...", file=sys.stderr, flush=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS], check=True
        )
        versions = _versions(python)
        if versions is None:
            raise RuntimeError("Celery and RQ were installed into bench/.venv-peers but cannot be imported")
    return versions


def _versions(python: Path) -> dict[str, str] | None:
    code = (
        "import json, celery, rq, kombu, redis; print(json.dumps({'celery': celery.__version__, "
        "'kombu': kombu.__version__, 'rq': rq.__version__, 'redis': redis.__version__}))"
    )
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None

"""``python -m tests.dramatiq_compat [--stock] [PYTEST_ARGS...]``: Dramatiq's own suite against our stack.

1. Download the source distribution of the installed Dramatiq with pip, once (cached in
   ``var/dramatiq-compat/``): Dramatiq's tests ship in it, so no copy of them is kept here.
2. Refuse to run unless the installed Dramatiq and the sdist are one version: a suite only
   tells something about the code it was written for.
3. Extract its ``tests/`` afresh into ``var/dramatiq-compat/dramatiq-VERSION/`` (a test touches
   its own file, and bytecode must not outlive a change of ours), and install our
   ``conftest.py`` (``plugin.py``) and ``common.py`` there, which Dramatiq keeps out of the sdist.
4. Run pytest there (one run at a time: runs share that directory and Redis database 12),
   each test under a timeout, the tests of ``differences.txt`` marked
   ``xfail(strict=True)``; exit with pytest's status, so any unlisted failure fails the run.

``--stock`` runs the same suite on Dramatiq's default middleware instead of ours, to tell a
difference of our stack from one of this machine. Other arguments go to pytest (``-k``, ``-x``).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import HeaderParser
from pathlib import Path

import dramatiq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE_DIR = ROOT / "var" / "dramatiq-compat"
DIFFERENCES = HERE / "differences.txt"
#: Per test: Dramatiq's slowest tests take about 20 s; a hang fails its test, not the whole run.
TEST_TIMEOUT_S = 120


class CompatError(RuntimeError):
    """The suite cannot be run as asked; the message says why and what to do."""


def installed_version() -> str:
    """The installed Dramatiq's version, when its metadata and its code agree on it."""
    metadata = importlib.metadata.version("dramatiq")
    if metadata != dramatiq.__version__:
        raise CompatError(
            f"dramatiq's metadata says {metadata} but its code says {dramatiq.__version__}: reinstall it "
            "(make setup) before comparing it with a suite."
        )
    return metadata


def download_sdist(version: str) -> Path:
    """``dramatiq-VERSION.tar.gz`` from the package index, downloaded unless already cached."""
    sdist = CACHE_DIR / f"dramatiq-{version}.tar.gz"
    if sdist.exists():
        return sdist
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"dramatiq=={version}",
        "--dest",
        str(CACHE_DIR),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not sdist.exists():
        raise CompatError(f"pip could not download the sdist of dramatiq {version}:\n{result.stdout}{result.stderr}")
    return sdist


def extract_suite(sdist: Path, version: str) -> Path:
    """Extract the sdist's ``tests/`` into a fresh directory and install our files; return the directory."""
    top = f"dramatiq-{version}/"
    run_dir = CACHE_DIR / f"dramatiq-{version}"
    with tarfile.open(sdist) as archive:
        pkg_info = archive.extractfile(top + "PKG-INFO")
        sdist_version = HeaderParser().parsestr(pkg_info.read().decode())["Version"] if pkg_info else None
        if sdist_version != version:
            raise CompatError(f"{sdist} holds dramatiq {sdist_version}, not the installed {version}: delete it.")
        members = [
            member.replace(name=member.name[len(top) :])
            for member in archive.getmembers()
            if member.name.startswith(top + "tests/")
        ]
        shutil.rmtree(run_dir, ignore_errors=True)
        archive.extractall(run_dir, members=members, filter="data")
    tests = run_dir / "tests"
    (tests / "__init__.py").touch()  # the test modules import `.common`
    shutil.copyfile(HERE / "plugin.py", tests / "conftest.py")
    shutil.copyfile(HERE / "common.py", tests / "common.py")
    # Found before our pyproject.toml (an ancestor), so pytest takes none of our own suite's settings.
    (run_dir / "pytest.ini").write_text("[pytest]\n")
    return run_dir


def run_suite(run_dir: Path, version: str, *, stock: bool, pytest_args: list[str]) -> int:
    stack = "Dramatiq's default middleware" if stock else "our middleware stack"
    print(f"Dramatiq {version}'s own tests against {stack} ({run_dir.relative_to(ROOT)}):", flush=True)
    env = {
        **os.environ,
        "DRAMATIQ_COMPAT_DIFFERENCES": str(DIFFERENCES),
        "DRAMATIQ_COMPAT_STACK": "stock" if stock else "ours",
    }
    # A reloading dramatiq master re-executes itself as plain `python -m dramatiq`: ours, found first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "-p",
        "no:cacheprovider",
        f"--timeout={TEST_TIMEOUT_S}",
        "-rfEX",
        *pytest_args,
    ]
    return subprocess.run(command, cwd=run_dir, env=env, check=False).returncode


@contextmanager
def one_run_at_a_time() -> Iterator[None]:
    """Hold the suite's lock: two runs would share its directory and empty each other's Redis database."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "run.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("Another run of the suite holds var/dramatiq-compat/run.lock; waiting for it.", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.dramatiq_compat", description=__doc__.splitlines()[0])
    parser.add_argument("--stock", action="store_true", help="run on Dramatiq's default middleware instead of ours")
    args, pytest_args = parser.parse_known_args(argv)
    with one_run_at_a_time():
        try:
            version = installed_version()
            run_dir = extract_suite(download_sdist(version), version)
        except CompatError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return run_suite(run_dir, version, stock=args.stock, pytest_args=pytest_args)


if __name__ == "__main__":
    sys.exit(main())

"""Start any of the test services that is not answering on loopback, then wait for it.

Run by ``make test`` before pytest: the suite tests against the real PostgreSQL, Redis and
RabbitMQ, and a machine where one of them stopped gets it started rather than skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time

START_TIMEOUT_S = 90

SERVICES: dict[str, tuple[int, list[str]]] = {
    "postgresql": (5432, ["bash", "-c", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"]),
    "redis": (
        6379,
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
    ),
    "rabbitmq": (5672, ["rabbitmq-server", "-detached"]),
}


def answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure(name: str, port: int, command: list[str]) -> None:
    if answers(port):
        return
    if shutil.which(command[0]) is None:
        sys.exit(f"error: {name} is not answering on 127.0.0.1:{port} and {command[0]} is not installed.")
    print(f"{name} is not answering on 127.0.0.1:{port}; starting it: {' '.join(command)}", flush=True)
    subprocess.run(command, check=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(port):
        if time.monotonic() > deadline:
            logs = " ".join(glob.glob("/var/log/rabbitmq/*.log") + glob.glob("/var/log/postgresql/*.log"))
            sys.exit(f"error: {name} did not answer on 127.0.0.1:{port} within {START_TIMEOUT_S} s; see {logs}")
        time.sleep(0.5)


def main() -> None:
    if os.environ.get("SKIP_SERVICE_START"):
        return
    for name, (port, command) in SERVICES.items():
        ensure(name, port, command)


if __name__ == "__main__":
    main()

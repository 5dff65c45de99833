"""python -m ops serve: the admin API and dashboard, on ADMIN_BIND:ADMIN_PORT (127.0.0.1:8080).

Without ADMIN_TOKENS or ADMIN_READONLY_TOKENS it refuses to start (exit code 2), unless given
--dev on a loopback address, where it serves without authentication.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_USAGE = 2

logger = logging.getLogger("ops.serve")


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the admin API and dashboard")
    serve.add_argument("--bind", help="address to listen on (default ADMIN_BIND, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default ADMIN_PORT, 8080)")
    serve.add_argument("--dev", action="store_true", help="allow serving without tokens, on 127.0.0.1 only")
    serve.set_defaults(handler=_serve)


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from actors.system import current_system
    from ops.admin.app import create_app
    from ops.admin.security import CannotServe, check_can_serve

    system = current_system()
    settings = system.settings
    bind = args.bind or settings.admin_bind
    port = args.port or settings.admin_port
    try:
        tokens = len(settings.admin_tokens) + len(settings.admin_readonly_tokens)
        check_can_serve(tokens=tokens, bind=bind, dev=args.dev)
    except CannotServe as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    app = create_app(system, dev_mode=args.dev)
    if app.state.authority.open_access:
        logger.warning("Serving WITHOUT authentication (--dev, no tokens) on http://%s:%d/.", bind, port)
    # uvicorn handles SIGINT and SIGTERM: it stops accepting, finishes requests in flight, then returns.
    uvicorn.run(app, host=bind, port=port, log_level="info", server_header=False)
    return 0

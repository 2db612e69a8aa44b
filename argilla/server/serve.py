"""Runs the unmodified argilla-server 2.8 on 127.0.0.1 for tests and local review sessions.

Run it with the server's own venv (see ``setup_env.sh``)::

    MAGPIE_ARGILLA_SERVER_API_KEY=... .venv-argilla-server/bin/python argilla/server/serve.py \\
        --home /tmp/argilla-home --port 0 --port-file /tmp/argilla-home/port

What it adds around the server, and nothing else:

* Redis: an in-process ``fakeredis`` TCP server on an ephemeral loopback port. The server only
  pings Redis at start-up and enqueues background jobs (hub import/export, webhooks) that no
  review flow uses, so no worker is started.
* Search: ``memory_search_engine`` registered in the server's search-engine registry and selected
  with ``ARGILLA_SEARCH_ENGINE=memory``.
* Database: SQLite under ``--home``, migrated to head, plus the default owner user with the API key
  taken from the environment (never from argv, so it does not show up in ``ps``).

``--port 0`` lets the OS pick a free port; the socket is bound here and handed to uvicorn, so there
is no window in which another process can take it. The chosen port is written to ``--port-file``
once the socket is listening (the HTTP app may still be starting: poll ``/api/v1/version``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import threading
from pathlib import Path

API_KEY_ENV = "MAGPIE_ARGILLA_SERVER_API_KEY"
LOOPBACK = "127.0.0.1"


def start_fake_redis() -> str:
    """Starts fakeredis on an ephemeral loopback port in a daemon thread; returns its URL."""
    from fakeredis import TcpFakeServer

    server = TcpFakeServer((LOOPBACK, 0))
    # Per-connection threads must not keep the process alive after uvicorn exits.
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()
    host, port = server.server_address[:2]
    return f"redis://{host}:{port}/0"


def configure_environment(home: Path, redis_url: str) -> None:
    """Server settings are read from ARGILLA_* variables when argilla_server is first imported."""
    os.environ["ARGILLA_HOME_PATH"] = str(home)
    os.environ["ARGILLA_DATABASE_URL"] = f"sqlite+aiosqlite:///{home / 'argilla.db'}"
    os.environ["ARGILLA_SEARCH_ENGINE"] = "memory"
    os.environ["ARGILLA_REDIS_URL"] = redis_url
    os.environ["ARGILLA_ENABLE_TELEMETRY"] = "false"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="directory for the SQLite database")
    parser.add_argument("--port", type=int, default=6900, help="TCP port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    api_key = os.environ.get(API_KEY_ENV)
    if not api_key:
        parser.error(f"set {API_KEY_ENV} to the API key the default user should get")

    args.home.mkdir(parents=True, exist_ok=True)
    configure_environment(args.home.resolve(), start_fake_redis())

    # Imported only now: these modules read the environment configured above at import time.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import memory_search_engine  # noqa: F401  (registers the "memory" engine)
    import uvicorn
    from argilla_server.cli.database.migrate import migrate_db
    from argilla_server.cli.database.users.create_default import create_default

    migrate_db(revision="head")
    # A random password: nobody logs in through the UI with it, and the server warns about defaults.
    create_default(api_key=api_key, password=secrets.token_urlsafe(16), quiet=True)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)  # atomic: a reader never sees a half-written number
    print(f"argilla-server listening on http://{LOOPBACK}:{port}", flush=True)

    config = uvicorn.Config("argilla_server._app:app", log_level=args.log_level, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

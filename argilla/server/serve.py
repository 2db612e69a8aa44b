"""Runs the unmodified argilla-server 2.8 on 127.0.0.1 for tests and local review sessions.

Run it with the server's own venv (see ``setup_env.sh``)::

    MAGPIE_ARGILLA_SERVER_API_KEY=... .venv-argilla-server/bin/python argilla/server/serve.py \\
        --home /tmp/argilla-home --port 0 --port-file /tmp/argilla-home/port

What it adds around the server, and nothing else:

* Redis: Debian's ``redis-server`` on a Unix socket under ``--home``, owned by this process. The
  server pings Redis at start-up and enqueues background jobs (dataset distribution updates,
  hub import/export, webhooks); no review flow needs their results, so no rq worker is started.
  (fakeredis was tried first: its TCP server drops the connection after any command it does not
  implement, such as the INFO that rq sends, and the next enqueue then fails at random.)
* Search: ``memory_search_engine`` registered in the server's search-engine registry and selected
  with ``ARGILLA_SEARCH_ENGINE=memory``.
* Database: SQLite under ``--home``, migrated to head, plus the default owner user ``argilla`` with
  the API key (and optionally the UI password) taken from the environment, never from argv, so
  they do not show up in ``ps``. On start-up the in-memory index is rebuilt from the database.

``--port 0`` lets the OS pick a free port; the socket is bound here and handed to uvicorn, so there
is no window in which another process can take it. The chosen port is written to ``--port-file``
once the socket is listening (the HTTP app may still be starting: poll ``/api/v1/version``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

API_KEY_ENV = "MAGPIE_ARGILLA_SERVER_API_KEY"
PASSWORD_ENV = "MAGPIE_ARGILLA_SERVER_PASSWORD"
LOOPBACK = "127.0.0.1"


def start_redis(home: Path) -> tuple[subprocess.Popen, str]:
    """Starts Debian's ``redis-server`` on a Unix socket under ``home``; returns it and its URL.

    A Unix socket instead of a TCP port: nothing listens on the network and two servers can never
    collide on a port. Nothing is persisted. The process is told to die with us (PDEATHSIG), so a
    killed launcher does not leave Redis behind.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: run argilla/server/setup_env.sh (apt-get install redis-server)")
    sock_path = home / "redis.sock"
    if len(str(sock_path)) > 100:  # the kernel limit on socket paths is 107 bytes
        sys.exit(f"--home path too long for a Unix socket: {sock_path}")
    sock_path.unlink(missing_ok=True)
    args = [binary, "--port", "0", "--unixsocket", str(sock_path), "--unixsocketperm", "700"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(home), "--logfile", str(home / "redis.log")]
    process = subprocess.Popen(args, preexec_fn=_die_with_parent, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not sock_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"redis-server did not start; see {home / 'redis.log'}")
        time.sleep(0.05)
    return process, f"unix://{sock_path}?db=0"


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the launcher dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux/glibc: the finally block in main() still stops Redis on a normal exit


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
    home = args.home.resolve()
    redis_process, redis_url = start_redis(home)
    try:
        return serve(home, redis_url, api_key, args.port, args.port_file, args.log_level)
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)


def serve(home: Path, redis_url: str, api_key: str, port: int, port_file: Path | None, log_level: str) -> int:
    """Migrates the database, creates the default user and runs uvicorn until SIGTERM/SIGINT."""
    configure_environment(home, redis_url)

    # Imported only now: these modules read the environment configured above at import time.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import memory_search_engine  # noqa: F401  (registers the "memory" engine)
    import uvicorn
    from argilla_server.cli.database.migrate import migrate_db
    from argilla_server.cli.database.users.create_default import create_default
    from argilla_server.cli.search_engine.reindex import reindex

    migrate_db(revision="head")
    # Tests get a random password (nobody logs in to the UI, and the server warns about defaults);
    # a person reviewing in the browser sets MAGPIE_ARGILLA_SERVER_PASSWORD (user "argilla").
    password = os.environ.get(PASSWORD_ENV) or secrets.token_urlsafe(16)
    create_default(api_key=api_key, password=password, quiet=True)
    # The in-memory index starts empty while SQLite keeps datasets across restarts: rebuild it
    # with the server's own reindex command so a restarted server searches what it stores.
    reindex(dataset_id=None)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    sock.listen(128)
    port = sock.getsockname()[1]
    if port_file:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)  # atomic: a reader never sees a half-written number
    print(f"argilla-server listening on http://{LOOPBACK}:{port}", flush=True)

    # A keep-alive longer than uvicorn's 5 s default: a client that reuses an idle connection just
    # as the server closes it gets a ReadError, and clients here often idle a few seconds.
    config = uvicorn.Config(
        "argilla_server._app:app", log_level=log_level, access_log=False, timeout_keep_alive=75
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

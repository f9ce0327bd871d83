"""``python -m webapp serve`` runs the app (optionally beside the watcher);
``python -m webapp adduser NAME`` creates an editor's account (the first one can also be made
in the browser, on the app's first-run page)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import getpass
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import uvicorn

from webapp import accounts
from webapp.db import make_engine, migrate
from webapp.settings import AppSettings

log = logging.getLogger("webapp")
PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webapp", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="where the database and images live")
    parser.add_argument("--watcher-config", type=Path, help="the watcher's settings file")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the newsroom app")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--with-watcher",
        action="store_true",
        help="also run `python -m cluster_manager watch`; Ctrl-C stops both",
    )
    adduser = commands.add_parser("adduser", help="create an editor's account")
    adduser.add_argument("name")
    adduser.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = AppSettings.from_env(data_dir=args.data_dir, watcher_config=args.watcher_config)
    if args.command == "adduser":
        return add_user(settings, args.name, args.password_stdin)
    return serve_app(settings, args.host, args.port, args.with_watcher)


def add_user(settings: AppSettings, name: str, from_stdin: bool) -> int:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 1
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    migrate(engine)
    from sqlalchemy.orm import Session

    with Session(engine) as db:
        try:
            accounts.add_user(db, name, password)
        except accounts.AccountError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    print(f"created editor {name!r}")
    return 0


def serve_app(settings: AppSettings, host: str, port: int, with_watcher: bool) -> int:
    from webapp.app import any_account, create_app

    app = create_app(settings)
    if not any_account(app.state.sessions):
        where = "with the setup token" if settings.setup_token else "in a browser on this machine"
        log.info(
            "no editor account yet: open http://%s:%d/setup %s to create the first one",
            "127.0.0.1" if host in ("0.0.0.0", "::") else host,
            port,
            where,
        )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port))
    if not with_watcher:
        _run(server)
        return 0
    watcher = start_watcher(settings.watcher_file)
    # A watcher that stops on its own (bad settings, a crash) stops the app too.
    threading.Thread(target=_stop_when_gone, args=(watcher, server), daemon=True).start()
    try:
        _run(server)
    finally:
        stop_watcher(watcher)
    return 0 if watcher.returncode == 0 else 1


def _run(server: uvicorn.Server) -> None:
    # Ctrl-C: uvicorn shuts down cleanly, then passes the interrupt on.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


def start_watcher(config: Path | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "cluster_manager", "watch"]
    if config is not None:
        command += ["--config", str(config)]
    log.info("starting the watcher: %s", " ".join(command))
    # Its own process group: Ctrl-C reaches the app only, which then stops the watcher once
    # (a second SIGINT would cut the watcher's drain short). PDEATHSIG: if the app is killed,
    # the watcher goes too.
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)


def stop_watcher(watcher: subprocess.Popen) -> None:
    if watcher.poll() is not None:
        return
    log.info("stopping the watcher (it finishes or hands back the stories it is rendering)")
    watcher.send_signal(signal.SIGTERM)
    try:
        watcher.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: the watcher stops its running stories now
        log.warning("stopping the watcher's running stories now")
        watcher.send_signal(signal.SIGTERM)
        watcher.wait()


def _stop_when_gone(watcher: subprocess.Popen, server: uvicorn.Server) -> None:
    code = watcher.wait()
    if not server.should_exit:
        log.error("the watcher exited with status %s; stopping the app", code)
        server.should_exit = True


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

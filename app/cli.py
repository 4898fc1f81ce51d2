"""The `tracktalk` command: serve, migrate, token, demo, check, fanout-node."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg

from app.auth.hs256 import DEFAULT_TTL, issue_token
from app.config import Settings
from app.data.db import MigrateError, SchemaError, check_schema, migrate
from app.dev.embedded import EmbeddedError
from app.env import ConfigError, url_list
from app.ops.check import QUEUE_ALERT

log = logging.getLogger("app.cli")


def home() -> Path:
    """Where the embedded database and its secret live (TRACKTALK_HOME, default ./.tracktalk)."""
    return Path(os.environ.get("TRACKTALK_HOME") or ".tracktalk")


def embedded_secret(root: Path) -> str:
    """The embedded mode's token key, made on first use and kept (mode 600) under `root`."""
    path = root / "secret"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


@contextlib.contextmanager
def database() -> Iterator[tuple[str, bool]]:
    """(DATABASE_URL, False), or an embedded server's URL and whether it was just created."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, False
        return
    from app.dev.embedded import EmbeddedPostgres

    with EmbeddedPostgres(home()) as server:
        yield server.url, server.created


def secret_key(*, make: bool) -> str:
    """TRACKTALK_SECRET, or with no DATABASE_URL the embedded mode's own key: made on first use
    when `make` (serve), else only read (a token signed with a key no server has is refused)."""
    key = os.environ.get("TRACKTALK_SECRET")
    if key:
        return key
    if os.environ.get("DATABASE_URL"):
        raise ConfigError(
            "TRACKTALK_SECRET is not set: `tracktalk token` signs with it; set the same value the servers "
            "use (tokens of your identity provider come from it, not from here)"
        )
    root = home()
    if not make and not (root / "secret").is_file():
        raise ConfigError(
            f"no token key: TRACKTALK_SECRET is not set and there is no {(root / 'secret').absolute()} "
            "(the key `tracktalk serve` makes for its embedded database). Run this command in the folder "
            "where `tracktalk serve` runs, or set TRACKTALK_HOME to its .tracktalk folder, or set "
            "TRACKTALK_SECRET to the key the servers use"
        )
    return embedded_secret(root)


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve the API, the sockets and the page."""
    from app.main import create_app
    from app.server import serve

    embedded = not os.environ.get("DATABASE_URL")
    with database() as (url, created):
        if embedded:
            migrate(url)
            if created:
                _load_demo(url)
            settings = Settings.from_env(
                database_url=url, secret=secret_key(make=True), demo=True, port=args.port
            )
        else:
            settings = Settings.from_env(port=args.port)
            check_schema(settings.database_url)
        address = f"http://{args.host}:{args.port}/"
        print(f"tracktalk: open {address}  (API schema: {address}schema/swagger)", flush=True)
        if embedded:
            print("tracktalk: a token for user 1: tracktalk token 1", flush=True)
        serve(create_app(settings), settings, args.host, args.port, reuse_port=args.reuse_port)


def _load_demo(url: str) -> None:
    from app.dev.demo import load_demo

    summary = load_demo(url)
    if not summary.already_loaded:
        print(f"tracktalk: demo data loaded: users {summary.users}, tracks {summary.track_ids}", flush=True)


def cmd_migrate(_: argparse.Namespace) -> None:
    """Bring the database to this version: the steps of sql/upgrade/ above its version, then
    sql/schema.sql and sql/triggers.sql."""
    with database() as (url, _created):
        version = migrate(url)
    print(f"tracktalk: schema version {version} applied")


def cmd_token(args: argparse.Namespace) -> None:
    """Print a token for a user."""
    if args.user_id < 1:
        raise ConfigError("USER_ID must be a user's id, a whole number >= 1")
    if args.ttl < 1:
        raise ConfigError("--ttl must be a number of seconds >= 1")
    print(issue_token(secret_key(make=False), args.user_id, args.ttl))


def cmd_demo(_: argparse.Namespace) -> None:
    """Load the demo data."""
    from app.dev.demo import load_demo

    with database() as (url, _created):
        migrate(url) if not os.environ.get("DATABASE_URL") else check_schema(url)
        summary = load_demo(url)
    state = "was already there" if summary.already_loaded else "loaded"
    print(f"tracktalk: demo data {state}: users {summary.users}, tracks {summary.track_ids}")


def cmd_check(args: argparse.Namespace) -> None:
    """Report the database's exposure; exit 1 on findings."""
    from app.ops.check import check, report

    if not 0 < args.queue_alert <= 1:
        raise ConfigError("--queue-alert must be a fraction of the NOTIFY queue: greater than 0, at most 1")
    nodes = [
        u for u in url_list(os.environ.get("TRACKTALK_LISTEN_URL", "")) if u != os.environ.get("DATABASE_URL")
    ]
    with database() as (url, _created):
        text, code = report(check(url, args.queue_alert, nodes))
    print(text)
    raise SystemExit(code)


def cmd_fanout_node(args: argparse.Namespace) -> None:
    """Prepare a fan-out node (app/ops/fanout_node.py)."""
    from app.ops.fanout_node import FanoutError, prepare

    if args.wait <= 0:
        raise ConfigError("--wait must be a number of seconds greater than 0")
    try:
        subscription = prepare(args.primary, args.node, args.name, args.wait, say=_say)
    except FanoutError as exc:
        print(f"tracktalk fanout-node: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"tracktalk fanout-node: ready (subscription {subscription}). Point replicas at it with "
        "TRACKTALK_LISTEN_URL (the nodes, comma-separated); once every replica listens on a node, "
        "UPDATE tracktalk.settings SET notify_mode = 'fanout' on the primary (docs/dba.md, \"Fan-out nodes\")",
        flush=True,
    )


def _say(line: str) -> None:
    print(f"tracktalk fanout-node: {line}", flush=True)


def parser() -> argparse.ArgumentParser:
    """The command line of the contract."""
    top = argparse.ArgumentParser(prog="tracktalk", description="Realtime, time-coded track comments.")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API, the WebSockets and the web page")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT: several serve processes (same user) share the port, the kernel "
        "spreading the connections over them; each is a whole replica, on a core of its own",
    )
    serve.set_defaults(run=cmd_serve)
    commands.add_parser(
        "migrate",
        help="apply the SQL: sql/upgrade/ steps above the database's version, sql/schema.sql, sql/triggers.sql",
    ).set_defaults(run=cmd_migrate)
    token = commands.add_parser("token", help="print an access token for a user")
    token.add_argument("user_id", type=int, metavar="USER_ID")
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL, metavar="SECONDS")
    token.set_defaults(run=cmd_token)
    commands.add_parser("demo", help="load the demo data").set_defaults(run=cmd_demo)
    check = commands.add_parser(
        "check", help="report what in the database is open to other roles (exit 1 on findings)"
    )
    check.add_argument(
        "--queue-alert",
        type=float,
        default=QUEUE_ALERT,
        metavar="FRACTION",
        help=f"report the NOTIFY queue from this fraction in use (default {QUEUE_ALERT})",
    )
    check.set_defaults(run=cmd_check)
    node = commands.add_parser(
        "fanout-node",
        help="prepare a fan-out node: a PostgreSQL that follows the primary by logical replication and "
        "sends the NOTIFYs (safe to run again)",
    )
    node.add_argument(
        "--primary",
        required=True,
        metavar="URL",
        help="the primary, as the node reaches it (its subscription connects with this URL: a role with "
        "REPLICATION that owns tracktalk's tables, or a superuser)",
    )
    node.add_argument(
        "--node", required=True, metavar="URL", help="the node's database (a superuser on PostgreSQL 15)"
    )
    node.add_argument(
        "--name",
        default=None,
        help="the subscription's name, and its slot's on the primary, starting with tracktalk_ "
        "(default: from --node)",
    )
    node.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the initial copy (default 600)",
    )
    node.set_defaults(run=cmd_fanout_node)
    return top


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `tracktalk` console script."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except (ConfigError, SchemaError) as exc:
        print(f"tracktalk: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (MigrateError, EmbeddedError) as exc:
        print(f"tracktalk: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except psycopg.OperationalError as exc:
        # One line, not a traceback per restart of a container waiting for its database.
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"tracktalk: the database cannot be reached (DATABASE_URL): {reason}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass

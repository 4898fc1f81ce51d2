"""One embedded PostgreSQL for the whole session; a fresh database per module or test; replicas
(plain, or over the demo album), nginx in front of them, and a headless chromium for the modules
that use them."""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.async_api import Browser, async_playwright, expect

from app.data.db import migrate
from app.dev.demo import DemoSummary, load_demo
from app.dev.embedded import EmbeddedPostgres
from app.logs import LIBRARIES
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, EXPECT_MS
from tests.support.clusters import sweep
from tests.support.host_app import HostApp
from tests.support.processes import Replica, replicas
from tests.support.proxies import Nginx
from tests.support.seed import World, seed

TEMPLATE = "tracktalk_template"


def pytest_sessionstart(session: pytest.Session) -> None:
    """PostgreSQL servers (and their folders) that a killed run of tests/support/clusters.py left
    behind, their owner gone, are stopped and removed first."""
    sweep()


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL server (the same starter `tracktalk serve` uses)."""
    # A root the server's unprivileged user can enter (pytest's own temp folders are private
    # to root), so that the data stays in it and goes with it.
    root = Path(tempfile.mkdtemp(prefix="tracktalk-test-"))
    root.chmod(0o755)
    try:
        with EmbeddedPostgres(root, fast=True) as server:
            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {TEMPLATE}")
            migrate(server.url_for(TEMPLATE))
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def new_database(pg: EmbeddedPostgres) -> Iterator[Callable[[], str]]:
    """Make a database with the schema applied (a copy of the migrated template); dropped at the end."""
    made: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        made.append(name)
        return pg.url_for(name)

    yield make
    with psycopg.connect(pg.url, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def db_url(new_database: Callable[[], str]) -> str:
    """A database of this test module's own."""
    return new_database()


@pytest.fixture(scope="module")
def world(db_url: str) -> World:
    """Seed users and tracks in the module's database."""
    return seed(db_url)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the replicas' logs go."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def replica(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """One `tracktalk serve` process over the module's database."""
    with replicas(db_url, log_dir, 1) as started:
        yield started[0]


@pytest.fixture(scope="module")
def pair(db_url: str, world: World, log_dir: Path) -> Iterator[list[Replica]]:
    """Two `tracktalk serve` processes over the module's one database."""
    with replicas(db_url, log_dir, 2) as started:
        yield started


@pytest.fixture(scope="module")
def demo(db_url: str) -> DemoSummary:
    """The demo album (users, tracks with real audio, a thread) in the module's database."""
    return load_demo(db_url)


@pytest.fixture(scope="module")
def servers(db_url: str, demo: DemoSummary, log_dir: Path) -> Iterator[list[Replica]]:
    """Two replicas over the module's database, with the demo sign-in on."""
    with replicas(db_url, log_dir, 2, TRACKTALK_DEMO="1") as started:
        yield started


@pytest.fixture(scope="module")
def nginx(pair: list[Replica]) -> Iterator[Nginx]:
    """nginx (deploy/nginx.conf) in front of the module's two replicas."""
    proxy = Nginx([replica.port for replica in pair])
    try:
        yield proxy.start()
    finally:
        proxy.cleanup()


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium: a missing one fails the tests (they are never skipped)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (make test does)"
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """A headless chromium for the module's pages (and every `expect` of theirs waits EXPECT_MS)."""
    expect.set_options(timeout=EXPECT_MS)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
def host_app() -> Iterator[HostApp]:
    """A host app's web server, on an origin of its own (tests/support/host_app.py)."""
    app = HostApp()
    yield app
    app.server.shutdown()
    app.server.server_close()


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Loggers as the test found them: create_app() sends the app's logs (and its libraries') to
    its own handler and stops them from propagating, which would hide them from the caplog of
    every later test in the process (random order made that depend on which ran first)."""
    names = ("app", *LIBRARIES)
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (logger.propagate, list(logger.handlers), list(logger.filters), logger.level)
    yield
    for name, (propagate, handlers, filters, level) in saved.items():
        logger = logging.getLogger(name)
        logger.propagate, logger.handlers, logger.filters = propagate, handlers, filters
        logger.setLevel(level)

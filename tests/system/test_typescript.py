"""TypeScript, as a front-end or Node developer adopting tracktalk would use it: types generated
from a replica's /schema/openapi.json with openapi-typescript, a client on them (openapi-fetch)
and the browser client's /client/v1/tracktalk.d.ts, imported by URL and by path — all checked by
tsc in strict mode, and the generated client then run with node against the replica.

The npm packages (tests/typescript/package.json, pinned by its package-lock.json) are installed
with `npm ci` into tests/typescript/node_modules (git-ignored), again only when the lock file
changes. Node and npm come from Debian (`nodejs`, `npm`: `make test-packages` installs them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ROOT, Replica
from tests.support.seed import World

pytestmark = pytest.mark.timeout(300)

PROJECT = ROOT / "tests" / "typescript"
MODULES = PROJECT / "node_modules"
STAMP = MODULES / ".installed-lock-sha256"
"""The hash of the package-lock.json that node_modules was installed from."""
NPM_TIMEOUT = 240


def tool(name: str) -> str:
    """The path of `name`; fails (never skips) with what to install."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: tests/system/test_typescript.py needs Node.js and npm "
            "(apt-get install nodejs npm; `make test-packages` does it as root)"
        )
    return found


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """tests/typescript/node_modules as package-lock.json pins it (npm ci, once per lock)."""
    tool("node")
    npm = tool("npm")
    lock = hashlib.sha256((PROJECT / "package-lock.json").read_bytes()).hexdigest()
    if not (STAMP.exists() and STAMP.read_text() == lock):
        done = run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], PROJECT, NPM_TIMEOUT)
        assert done.returncode == 0, f"npm ci failed in {PROJECT}:\n{done.stdout}{done.stderr}"
        STAMP.write_text(lock)
    return MODULES


@pytest.fixture
def project(tmp_path: Path, node_modules: Path, replica: Replica) -> Path:
    """A TypeScript project in a tmp folder: the sources, the server's address put in, and the
    packages linked in."""
    (tmp_path / "src").mkdir()
    for name in ("client.ts", "feed.ts"):
        (tmp_path / "src" / name).write_text(
            (PROJECT / name).read_text().replace("__TRACKTALK__", replica.http)
        )
    config = (PROJECT / "tsconfig.json").read_text().replace("__TRACKTALK__", replica.http)
    (tmp_path / "tsconfig.json").write_text(config)
    (tmp_path / "package.json").write_text(json.dumps({"type": "module", "private": True}))
    (tmp_path / "node_modules").symlink_to(node_modules, target_is_directory=True)
    return tmp_path


def bin_of(node_modules: Path, name: str) -> str:
    return str(node_modules / ".bin" / name)


def test_a_client_generated_from_the_openapi_document_type_checks_and_works(
    project: Path, node_modules: Path, replica: Replica, world: World
) -> None:
    generated = run(
        [
            bin_of(node_modules, "openapi-typescript"),
            f"{replica.http}/schema/openapi.json",
            "-o",
            "src/api.d.ts",
        ],
        project,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    api = (project / "src" / "api.d.ts").read_text()
    assert '"/api/tracks/{track_id}/comments"' in api and "ErrorBody" in api
    vendor = project / "vendor"
    vendor.mkdir()
    for name in ("tracktalk.js", "tracktalk.d.ts"):  # the way docs/protocol.md says to get them
        answer = httpx.get(f"{replica.http}/client/v1/{name}", timeout=10)
        assert answer.status_code == 200
        (vendor / name).write_bytes(answer.content)

    checked = run([bin_of(node_modules, "tsc"), "-p", "tsconfig.json"], project)
    assert checked.returncode == 0, f"tsc:\n{checked.stdout}{checked.stderr}"

    ran = run(
        [
            tool("node"),
            "--input-type=module",
            "-e",
            "import { run } from './out/client.js';"
            " console.log(JSON.stringify(await run(process.argv[1], process.argv[2], process.argv[3])));",
            replica.http,
            world.tokens["alice"],
            world.public,
        ],
        project,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    said = json.loads(ran.stdout)
    assert re.fullmatch(r"posted \d+: from a generated client", said[0]), said
    assert said[1:] == [
        "GET a missing track: 404 track 'no-such-track' not found",
        "listed 1",
        "liked: 1",
    ]


def test_tsc_fails_where_the_types_say_no(project: Path, node_modules: Path, replica: Replica) -> None:
    """The checks are real: without the generated types, and with a wrong field, tsc fails."""
    (project / "src" / "api.d.ts").write_text("export type paths = any;\nexport type components = any;\n")
    vendor = project / "vendor"
    vendor.mkdir()
    for name in ("tracktalk.js", "tracktalk.d.ts"):
        (vendor / name).write_bytes(httpx.get(f"{replica.http}/client/v1/{name}", timeout=10).content)
    loose = run([bin_of(node_modules, "tsc"), "-p", "tsconfig.json", "--noEmit"], project)
    assert loose.returncode != 0
    assert "Unused '@ts-expect-error' directive" in loose.stdout, loose.stdout  # `any` lets all through
    assert "feed.ts" not in loose.stdout, loose.stdout  # the browser client's types hold
    feed = project / "src" / "feed.ts"
    feed.write_text(feed.read_text() + "\nexport const wrong: string = PROTOCOL;\n")
    (project / "src" / "client.ts").unlink()
    wrong = run([bin_of(node_modules, "tsc"), "-p", "tsconfig.json", "--noEmit"], project)
    assert wrong.returncode != 0 and "feed.ts" in wrong.stdout and "TS2322" in wrong.stdout, wrong.stdout
    assert os.path.islink(project / "node_modules")

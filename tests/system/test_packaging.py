"""What `pip install` of the project gives a user of the Python client: the wheel holds the
`tracktalk` package beside `app` (with its type marker), and `from tracktalk.client import …` works
from the installed files alone, in a folder far from the project's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(180)


def test_the_wheel_installs_the_python_client(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    for name in ("app", "tracktalk"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("tracktalk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "tracktalk/__init__.py",
        "tracktalk/client.py",
        "tracktalk/api.py",
        "tracktalk/py.typed",
        "app/wire.py",
    ):
        assert name in names, f"{name} is not in {wheel.name}"
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tracktalk.client as c; from tracktalk.client import TrackFeed, Topics, Api, Refused; "
            "print(c.__file__)",
        ],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(site / "tracktalk" / "client.py")

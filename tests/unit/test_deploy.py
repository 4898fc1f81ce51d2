"""The production topology without containers, and the database roles of docs/dba.md.

What this module proves, and what it does not:

- It never builds the image nor runs docker-compose.yml: the suite runs where no container
  engine is set up and no image registry can be reached. It reads the Dockerfile and the compose
  file for what must hold between them and the code (the files the image gets, the user it runs
  as, the placeholders nginx fills), and runs, with processes, what the image would hold: the
  service from a folder that has only the files the image gets (.dockerignore), so that a file
  the image leaves out cannot be needed.
- It runs the topology of docker-compose.yml with the same pieces as processes: deploy/nginx.conf,
  filled the way the nginx image fills it, in Debian's nginx in front of two real `tracktalk
  serve` processes; Debian's PgBouncer, in transaction mode, in front of two replicas' request
  pools as docs/dba.md describes; the two roles of sql/roles.sql, the owner migrating and a
  replica serving as the app role.
- Not proven here: that `python:3.11-slim`, `postgres:16` and `nginx:1.27` behave as the
  processes that stand for them (the PostgreSQL the suite starts, Debian's nginx 1.22), nor the
  compose file's healthchecks and start order. The image itself was built and run by hand once
  with podman (README, "Production": a stand-in base image, since none could be pulled).
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support.processes import ROOT
from tests.support.proxies import NGINX_TEMPLATE, PLACEHOLDER

pytestmark = pytest.mark.timeout(180)


def test_compose_runs_the_topology_that_is_tested_here() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["command"] == ["migrate"]
    replica_names = [name for name in services if name.startswith("tracktalk-")]
    assert len(replica_names) == 2
    for name in replica_names:
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert {"DATABASE_URL", "TRACKTALK_SECRET", "TRACKTALK_DEMO"} <= set(service["environment"])
    front = services["nginx"]
    assert "127.0.0.1:8080:80" in front["ports"]
    assert "./deploy/nginx.conf:/etc/nginx/templates/default.conf.template:ro" in front["volumes"]
    # The image fills exactly the placeholders that this module fills, with the replicas' names.
    placeholders = set(PLACEHOLDER.findall(NGINX_TEMPLATE.read_text()))
    assert placeholders == {key for key in front["environment"] if key.startswith("TRACKTALK_")}
    upstreams = {front["environment"][f"TRACKTALK_REPLICA_{n}"] for n in (1, 2)}
    assert upstreams == {f"{name}:8000" for name in replica_names}


def test_compose_has_the_fan_out_topology_that_test_fanout_runs() -> None:
    """A primary with wal_level = logical, two nodes prepared by `tracktalk fanout-node`, the mode
    set once both are, and each replica listening on its own node first, the other next
    (tests/integration/test_fanout.py runs the same topology with processes)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "wal_level=logical" in services["postgres"]["command"]
    primary = services["tracktalk-1"]["environment"]["DATABASE_URL"]
    nodes = {}
    for name in ("a", "b"):
        assert services[f"node-{name}"]["image"] == "postgres:16"
        command = services[f"fanout-{name}"]["command"]
        assert command[0] == "fanout-node" and command[command.index("--primary") + 1] == primary
        nodes[name] = command[command.index("--node") + 1]
        assert f"@node-{name}:" in nodes[name]
        assert services[f"fanout-{name}"]["depends_on"][f"node-{name}"]["condition"] == "service_healthy"
    assert "notify_mode = 'fanout'" in services["fanout-mode"]["command"][-1]
    for replica, order in (("tracktalk-1", "ab"), ("tracktalk-2", "ba")):
        environment = services[replica]["environment"]
        assert environment["DATABASE_URL"] == primary  # writes go to the primary
        assert environment["TRACKTALK_LISTEN_URL"] == ",".join(nodes[n] for n in order)
        assert services[replica]["depends_on"]["fanout-mode"]["condition"] == "service_completed_successfully"


def test_the_image_gets_what_the_service_reads() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M), "the service must not run as root"
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile, re.M)
    sources = {item for line in copied for item in line.split()}
    assert {"pyproject.toml", "README.md", "app", "sql"} <= sources
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert sources <= allowed

"""What stands between a client and the replicas: nginx (deploy/nginx.conf) and a TCP proxy that can cut or stall a connection."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.support.processes import ROOT, LocalServer, debian_binary, free_port, launch
from tests.support.reaper import release

NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"


PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""A `${NAME}` of deploy/nginx.conf, filled as the nginx image's envsubst does."""


class TcpProxy:
    """A real TCP forwarder that a test can cut and restore: a network outage on demand."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or 0
        """Its own port: the one given, or the one the system gives at its first start."""
        self._server: socketserver.ThreadingTCPServer | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._forward(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]  # the same again after a cut
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def cut(self) -> None:
        """Stop accepting and drop every open connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        upstream.settimeout(None)
        with self._lock:
            self._sockets.update((client, upstream))
        pipe = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        pipe.start()
        _pump(client, upstream)
        pipe.join(5)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def render(template: str, values: dict[str, str]) -> str:
    """Fill `${NAME}` as the nginx image's envsubst does; every placeholder must have a value."""
    missing = set(PLACEHOLDER.findall(template)) - set(values)
    assert not missing, f"no value for {sorted(missing)}"
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class Nginx(LocalServer):
    """Debian's nginx in the foreground, with deploy/nginx.conf in front of `upstreams`."""

    def __init__(self, upstreams: list[int]) -> None:
        self.port = free_port()
        # A prefix the workers (nobody, when we are root) can enter: pytest's folders are private.
        self.prefix = Path(tempfile.mkdtemp(prefix="tracktalk-nginx-"))
        self.prefix.chmod(0o755)
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        site = render(
            NGINX_TEMPLATE.read_text(),
            {
                "TRACKTALK_LISTEN": f"127.0.0.1:{self.port}",
                "TRACKTALK_REPLICA_1": f"127.0.0.1:{upstreams[0]}",
                "TRACKTALK_REPLICA_2": f"127.0.0.1:{upstreams[1]}",
                "TRACKTALK_ACCESS_LOG": str(self.access_log),
            },
        )
        (self.prefix / "tracktalk.conf").write_text(site)
        user = ""
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
        # The only part that is not deploy/nginx.conf: what the nginx image's own nginx.conf does.
        temp = " ".join(
            f"{kind}_temp_path {self.prefix}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.prefix / "nginx.conf").write_text(
            f"""
            {user}
            worker_processes 1;
            events {{ worker_connections 256; }}
            http {{
                {temp}
                include {self.prefix}/tracktalk.conf;
            }}
            """
        )
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.error_log.read_text(errors="replace")[-3000:] if self.error_log.exists() else ""

    def start(self) -> Nginx:
        nginx = debian_binary("nginx")
        conf = str(self.prefix / "nginx.conf")
        check = subprocess.run(
            [nginx, "-t", "-q", "-p", str(self.prefix), "-e", str(self.error_log), "-c", conf],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, f"nginx -t refused the config:\n{check.stderr}{self.log()}"
        self.process = launch(
            [
                nginx,
                *("-p", str(self.prefix), "-e", str(self.error_log), "-c", conf),
                *("-g", f"daemon off; pid {self.prefix / 'nginx.pid'};"),
            ],
            self.port,
            self.log,
            self.prefix,
        )
        return self

    def stop(self) -> int | None:
        """Graceful stop (SIGQUIT: finish what is in flight); the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGQUIT)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"nginx did not stop within 15 s:\n{self.log()}") from None

    def upstreams(self) -> list[str]:
        """The replica (host:port) of each logged request, in order."""
        if not self.access_log.exists():
            return []
        return [line.split(" ", 1)[0] for line in self.access_log.read_text().splitlines()]

    def cleanup(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)
        release(self.process)

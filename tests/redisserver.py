"""A real ``redis-server`` for tests and benches: started on a private unix socket in a temp
dir (no TCP port, no persistence), stopped and removed afterwards. Debian's package, which
``scripts/bootstrap`` installs."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "redis_server_path"]


def redis_server_path() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).exists():
        raise RuntimeError("redis-server is not installed: run scripts/bootstrap (make test)")
    return path


class RedisServer:
    """``with RedisServer() as redis: redis.url`` (``unix:///.../redis.sock``). With
    ``password``, clients must AUTH; :meth:`stop` and :meth:`start` take it down and bring
    it back on the same socket (its data is lost: nothing is persisted). With ``tls``, it
    also listens for TLS on a loopback port with a certificate from a CA made for it
    (``ca_file``), and ``url`` is ``rediss://localhost:PORT``."""

    def __init__(self, password: str = "", tls: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="shardline-redis-"))
        self.socket_path = self.dir / "redis.sock"
        self.password = password
        self.tls_port = _free_port() if tls else 0
        self.ca_file = self.dir / "ca.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls_port:
            return f"rediss://{auth}localhost:{self.tls_port}"
        return f"unix://{auth}{self.socket_path}"

    def _tls_args(self) -> list[str]:
        """A CA and a certificate for localhost signed by it (made once, with openssl)."""
        d = self.dir
        if not (d / "server.pem").exists():
            openssl = shutil.which("openssl")
            if openssl is None:
                raise RuntimeError("openssl is needed to make a TLS certificate for redis-server")

            def sh(*args: str) -> None:
                subprocess.run([openssl, *args], check=True, capture_output=True)

            key, csr, ext = str(d / "ca.key"), str(d / "server.csr"), str(d / "ext.cnf")
            sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", key,
               "-out", str(self.ca_file), "-subj", "/CN=shardline test CA")  # fmt: skip
            (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            sh("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
               "-keyout", str(d / "server.key"), "-out", csr)  # fmt: skip
            sh("x509", "-req", "-in", csr, "-days", "1", "-CA", str(self.ca_file), "-CAkey", key,
               "-CAcreateserial", "-extfile", ext, "-out", str(d / "server.pem"))  # fmt: skip
        return [
            *("--tls-port", str(self.tls_port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key")),
            *("--tls-ca-cert-file", str(self.ca_file), "--bind", "127.0.0.1"),
        ]

    def start(self, timeout: float = 10.0) -> None:
        args = [
            redis_server_path(),
            *("--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.dir)),
            *("--daemonize", "no", "--loglevel", "warning"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls_port:
            args += self._tls_args()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {timeout}s")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

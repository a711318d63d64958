"""Real services for multi-worker tests: throwaway PostgreSQL databases, an `mlflow server`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_ADMIN = "postgresql://{user}@127.0.0.1:5432/test"


def _connect():  # type: ignore[no-untyped-def]
    import psycopg2

    last: Exception | None = None
    for user in ("postgres", "root"):
        try:
            conn = psycopg2.connect(PG_ADMIN.format(user=user), connect_timeout=3)
            conn.autocommit = True
            return conn, user
        except psycopg2.Error as error:
            last = error
    if os.environ.get("MLFLOW_HPO_REQUIRE_POSTGRES"):
        raise RuntimeError(f"PostgreSQL on 127.0.0.1:5432 is required here: {last}")
    pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {last}")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database for one test; dropped afterwards. Yields its SQLAlchemy URL."""
    conn, user = _connect()
    name = f"mlflow_hpo_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{user}@127.0.0.1:5432/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


class MlflowServer:
    """A real `mlflow server` on a loopback port, that a test can stop and start again (a
    tracking server that restarts), on the same backend store and port."""

    def __init__(self, backend_uri: str, artifacts: Path, port: int, workers: int = 1) -> None:
        self.backend_uri, self.artifacts, self.port, self.workers = (
            backend_uri,
            artifacts,
            port,
            workers,
        )
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = artifacts.parent / f"mlflow-server-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        log = open(self.log_path, "a")  # noqa: SIM115 - the server process holds it
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--backend-store-uri", self.backend_uri),
                *("--artifacts-destination", str(self.artifacts)),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--workers", str(self.workers)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with all its workers
        )
        log.close()
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not start:\n{text}")
            time.sleep(0.3)

    def stop(self, kill: bool = False) -> None:
        """Stop the server (``kill``: SIGKILL, as a crash) and wait until it is gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        group = os.getpgid(proc.pid)
        os.killpg(group, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            proc.wait()
        # uvicorn's workers may outlive a killed master: wait until the port is free.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    pass
            except OSError:
                return
            time.sleep(0.2)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int, workers: int = 1) -> Iterator[str]:
    """A real `mlflow server` on loopback; stopped (and waited for) on exit."""
    server = MlflowServer(backend_uri, artifacts, port, workers)
    try:
        yield server.start()
    finally:
        server.stop()

"""Real services for multi-worker tests: throwaway PostgreSQL databases, an `mlflow server`."""

from __future__ import annotations

import os
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


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int) -> Iterator[str]:
    """A real `mlflow server` on loopback; stopped (and waited for) on exit."""
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                text = (artifacts.parent / "mlflow-server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not start:\n{text}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

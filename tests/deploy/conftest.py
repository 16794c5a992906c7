"""Fixtures for the deployment tests: a real Postgres cluster on loopback (the `chroma run` server,
`chroma_server`, is tests/conftest.py's).

The cluster is started once per test session (initdb + pg_ctl in a temporary folder, on a free port;
as the unprivileged ``postgres`` user when the tests run as root, as CI does), each test gets a
database of its own, and the cluster is stopped and removed in teardown."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from codi2_agent.local_services import (
    LocalServiceError,
    PostgresCluster,
    start_postgres,
)

STEPS = 2  # diffusion steps: the turns' cost, not their quality, matters here


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = start_postgres(timeout=60)
    except LocalServiceError as exc:
        pytest.fail(f"cannot start the test Postgres: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh database of the session's cluster."""
    return postgres_cluster.create_database("t" + uuid.uuid4().hex[:16])


@pytest.fixture
def shared_root(tmp_path: Path) -> Path:
    """The folder every worker shares (its artifact store)."""
    return tmp_path / "shared"

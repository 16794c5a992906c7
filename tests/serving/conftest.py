"""The model server for the serving tests: `codi2-agent serve` in a subprocess, once per test session.

Ray starts in that process (``--num-cpus 2``, no dashboard) on 127.0.0.1 and a free port, serving the
seeded random tiny model at few diffusion steps, once on one replica and once on two under ``/pair``
(behind the session-affinity router); teardown stops it with SIGTERM, as an operator would
(`test_served.py` checks that stop last).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from served_model import Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    try:
        served = start_server(tmp_path_factory.mktemp("served"), tiny_model_dir, pair=True)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield served
    served.stop()  # a no-op when the stop test ran it already

"""Shared fixtures: real local clusters of sidecar and Module processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tinyraft.local import LocalCluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """make_cluster(members=3, module="kv", env={...}, faults=False, form=True).
    Every process is killed at the end of the test; on failure the member logs are
    printed so a red CI run explains itself."""
    clusters: list[LocalCluster] = []

    def make(members: int = 3, form: bool = True, **kwargs: object) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(clusters)}", **kwargs)  # type: ignore[arg-type]
        clusters.append(cluster)
        if form:
            cluster.form(members)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    # The logs of the test's own clusters (make_cluster) or of a module's shared one.
    shared = item.funcargs.get("cluster")
    bases = [item.funcargs.get("tmp_path"), getattr(shared, "base_dir", None)]
    for base in bases:
        if isinstance(base, Path):
            for log in sorted(base.glob("**/*.log")):
                tail = log.read_text(errors="replace").splitlines()[-25:]
                report.sections.append((f"log {log.name}", "\n".join(tail)))

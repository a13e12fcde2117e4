"""A cluster shared by a whole test module (forming one costs seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyraft.local import LocalCluster


def log_tails(base: Path, lines: int = 25) -> str:
    """The last lines of every process log under base, for a failure's report."""
    out = []
    for log in sorted(base.rglob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.relative_to(base)}\n" + "\n".join(tail))
    return "\n".join(out)


def formed_cluster(base: Path, members: int, **kwargs: Any) -> LocalCluster:
    """A formed cluster under base; a failure to form is reported with every log."""
    cluster = LocalCluster(base, **kwargs)
    try:
        cluster.form(members)
    except TimeoutError as err:
        tails = log_tails(cluster.base_dir)
        cluster.close()
        raise TimeoutError(f"{err}\n{tails}") from None
    return cluster

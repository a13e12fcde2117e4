"""The README stays true: its configuration table and its examples come from the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tinyraft.server.config import reference_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_configuration_table_lists_every_setting_exactly():
    rows = re.findall(r"^\| `([A-Z_]+)` \| `(--[a-z-]+)` \| (.*?) \| (.*?) \|$", README, re.M)
    assert rows == [tuple(r) for r in reference_table()]


def test_the_module_example_is_a_working_module():
    source = next(b for b in python_blocks() if "class Counter(Module)" in b)
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(source, "README.md", "exec"), namespace)
    counter = namespace["Counter"]()  # type: ignore[operator]
    assert counter.apply(b'{"name": "raft"}', 1) == b'{"count": 1}'
    assert json.loads(counter.query(b'{"name": "raft"}')) == {"count": 1}
    copy = namespace["Counter"]()  # type: ignore[operator]
    copy.restore(counter.snapshot())
    assert copy.counts == counter.counts


def test_the_caller_example_compiles():
    source = next(b for b in python_blocks() if "Caller(" in b)
    body = "    " + source.replace("\n", "\n    ")
    compile(f"async def example():\n{body}", "README.md", "exec")


def test_documents_the_readme_links_to_exist():
    for doc in re.findall(r"`(docs/[a-z-]+\.md)`", README):
        assert (ROOT / doc).is_file(), f"README points at {doc}, which does not exist"

"""The checked-in stubs are exactly what the pinned grpcio-tools generates."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_the_protos(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([ROOT / "scripts" / "gen-proto", tmp_path], check=True, env=env)
    fresh = tmp_path / "tinyraft" / "v1"
    checked_in = ROOT / "sidecar" / "tinyraft" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names, "protoc generated nothing"
    _match, mismatch, errors = filecmp.cmpfiles(fresh, checked_in, names, shallow=False)
    assert not mismatch and not errors, f"regenerate with scripts/gen-proto: {mismatch + errors}"

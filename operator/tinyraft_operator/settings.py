"""The operator's own settings, from environment variables (read once, at import).

TINYRAFT_SIDECAR_IMAGE                 sidecar image injected unless a RaftCluster names one
TINYRAFT_OPERATOR_ADDRESS_OVERRIDES    JSON object {"pod DNS host:port": "host:port"}, or
                                       @/path/to/file.json: where the operator reaches a
                                       member's gRPC port (tests map pods to loopback ports);
                                       unmapped addresses are used as they are
TINYRAFT_OPERATOR_INTERVAL             seconds between periodic reconciles (default 5)
TINYRAFT_OPERATOR_METRICS_ADDR         host:port of the operator's Prometheus endpoint
                                       (default 0.0.0.0:9200; empty disables)
TINYRAFT_OPERATOR_PEERING              kopf peering name for several operator replicas;
                                       unset: standalone (one replica)
TINYRAFT_OPERATOR_RPC_TIMEOUT          seconds for one admin RPC (default 10)
TINYRAFT_OPERATOR_TEST_CRASH_AFTER     test-only fault injection: exit the process right
                                       after an action of this kind succeeded
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import tinyraft

GROUP = "tinyraft.dev"
VERSION = "v1alpha1"
PLURAL = "raftclusters"
KIND = "RaftCluster"
API_VERSION = f"{GROUP}/{VERSION}"

GRPC_PORT = 7000
METRICS_PORT = 9100
DEFAULT_IMAGE = f"tinyraft/tinyraft:{tinyraft.__version__}"


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    sidecar_image: str = DEFAULT_IMAGE
    address_overrides: dict[str, str] = field(default_factory=dict)
    interval_s: float = 5.0
    metrics_addr: str = "0.0.0.0:9200"
    peering: str = ""
    rpc_timeout_s: float = 10.0
    crash_after: str = ""
    overrides_file: str = ""  # re-read when it changes (tests add pods as they go)
    _cache: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, address: str) -> str:
        """Where to reach (and what to advertise for) a member's pod DNS address."""
        overrides = self.address_overrides
        if self.overrides_file:
            try:
                mtime = os.stat(self.overrides_file).st_mtime_ns
            except OSError:
                mtime = -1
            if self._cache.get("mtime") != mtime:
                self._cache["mtime"] = mtime
                self._cache["map"] = _overrides("@" + self.overrides_file) if mtime >= 0 else {}
            overrides = self._cache["map"]  # type: ignore[assignment]
        return overrides.get(address, address)


def _overrides(raw: str) -> dict[str, str]:
    if not raw.strip():
        return {}
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"TINYRAFT_OPERATOR_ADDRESS_OVERRIDES: not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SettingsError(
            'TINYRAFT_OPERATOR_ADDRESS_OVERRIDES: expected {"host:port": "host:port", ...}'
        )
    return value


def _float(environ: dict[str, str] | os._Environ[str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be more than 0, got {raw!r}")
    return value


def load(environ: dict[str, str] | os._Environ[str] = os.environ) -> Settings:
    raw = environ.get("TINYRAFT_OPERATOR_ADDRESS_OVERRIDES", "").strip()
    return Settings(
        sidecar_image=environ.get("TINYRAFT_SIDECAR_IMAGE", "").strip() or DEFAULT_IMAGE,
        address_overrides={} if raw.startswith("@") else _overrides(raw),
        overrides_file=raw[1:] if raw.startswith("@") else "",
        interval_s=_float(environ, "TINYRAFT_OPERATOR_INTERVAL", 5.0),
        metrics_addr=environ.get("TINYRAFT_OPERATOR_METRICS_ADDR", "0.0.0.0:9200").strip(),
        peering=environ.get("TINYRAFT_OPERATOR_PEERING", "").strip(),
        rpc_timeout_s=_float(environ, "TINYRAFT_OPERATOR_RPC_TIMEOUT", 10.0),
        crash_after=environ.get("TINYRAFT_OPERATOR_TEST_CRASH_AFTER", "").strip(),
    )

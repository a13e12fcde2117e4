"""The sidecar's configuration: each setting from a command-line flag, else an
environment variable, else a default.

Every setting is listed once, in `_SETTINGS`; `--help` and `reference_table()` (which
the README's configuration reference is checked against) are generated from it.

Conventions:
- An empty or all-blank value counts as not set, so a template that renders
  `NODE_ID=` behaves like one that leaves it out. The exception is METRICS_ADDR,
  where an empty value turns the metrics endpoint off.
- Boolean flags may be given bare: `--bootstrap` means `--bootstrap=true`.
- NODE_ADVERTISE_ADDR defaults to the listen address, except when that listens on
  every interface (0.0.0.0 or [::]): there is no way to know which of this host's
  names the other members can reach, and guessing 127.0.0.1 would give a cluster
  that works on one machine and silently fails across pods. So it is then required
  (the operator sets it to the pod's stable DNS name).
- RAFT_FSYNC=false skips fsync before acknowledging. A member that loses power may
  then forget entries and votes it already acknowledged, which can lose committed
  data or elect two leaders in one term. For benchmarks only.

TLS: set TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE together (or none, for
plaintext). With TLS on, the one port serves every service (peer, caller, admin)
over mutual TLS: each side presents a certificate signed by TLS_CA_FILE, and a
connection without one is refused. There is deliberately no per-service switch:
client authentication is settled in the TLS handshake, before the service is known,
and Python gRPC can only require a client certificate or never ask for one. Letting
callers in without one would let anyone reach the admin and peer services too.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

LOG_LEVELS = ("debug", "info", "warning", "error")
_WILDCARD_HOSTS = ("0.0.0.0", "::")
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?"
)
_IPV4ISH = re.compile(r"[0-9.]+")
_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
_SIZE = re.compile(r"([0-9]{1,18})\s*(KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "kib": KIB, "mib": MIB, "gib": GIB}
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class ConfigError(Exception):
    """Bad or missing configuration. The message is one line naming the variable."""

    def __init__(self, message: str) -> None:
        # Argparse messages quote what the user typed; keep even those on one line.
        super().__init__("\\n".join(message.splitlines()))


@dataclass(frozen=True, slots=True)
class Address:
    host: str  # IPv6 without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in _WILDCARD_HOSTS


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    node_id: str | None  # None: the caller takes it from the data dir's identity or fails
    listen: Address
    advertise: Address
    bootstrap: bool
    data_dir: Path
    join: tuple[Address, ...]
    auto_promote: bool
    module: Address
    metrics: Address | None  # None: metrics disabled
    heartbeat_ms: int
    election_ms: int
    max_command_bytes: int
    max_pending: int
    snapshot_entries: int
    snapshot_bytes: int
    fsync: bool
    tls: TlsConfig | None
    shutdown_timeout_s: float
    log_level: str

    @property
    def tick_ms(self) -> int:
        """One core tick is one heartbeat interval."""
        return self.heartbeat_ms

    @property
    def heartbeat_ticks(self) -> int:
        return 1

    @property
    def election_ticks(self) -> int:
        return self.election_ms // self.heartbeat_ms


@dataclass(frozen=True, slots=True)
class _Setting:
    name: str  # SidecarConfig field, and the argparse dest
    env: str
    flag: str
    default: str | None  # raw text, parsed like a user's value; None: no default
    shown_default: str  # for --help and the reference table
    help: str
    metavar: str = "VALUE"
    boolean: bool = False


_SETTINGS = (
    _Setting("node_id", "NODE_ID", "--id", None, "(from the data dir)",
             "this member's id, [A-Za-z0-9._-]{1,63}; required unless the data dir "
             "already holds an identity", "ID"),
    _Setting("listen", "NODE_LISTEN_ADDR", "--listen", "0.0.0.0:7000", "0.0.0.0:7000",
             "HOST:PORT serving the peer, caller and admin gRPC services", "HOST:PORT"),
    _Setting("advertise", "NODE_ADVERTISE_ADDR", "--advertise", None,
             "the listen address; required when listening on 0.0.0.0 or [::]",
             "HOST:PORT at which the other members and callers reach this one", "HOST:PORT"),
    _Setting("bootstrap", "RAFT_BOOTSTRAP", "--bootstrap", "false", "false",
             "start a new single-member cluster from this member (once, ever)", "BOOL",
             boolean=True),
    _Setting("data_dir", "RAFT_DATA_DIR", "--data-dir", None, "(required)",
             "directory for the log, hard state and snapshots", "PATH"),
    _Setting("join", "RAFT_JOIN", "--join", "", "(none)",
             "comma-separated HOST:PORT of existing members to ask to add this one",
             "HOST:PORT,..."),
    _Setting("auto_promote", "RAFT_AUTO_PROMOTE", "--auto-promote", "true", "true",
             "after joining with RAFT_JOIN, ask to become a voter once caught up; false "
             "leaves promotion to an operator (Admin Promote)", "BOOL", boolean=True),
    _Setting("module", "MODULE_ADDR", "--module", "127.0.0.1:7100", "127.0.0.1:7100",
             "HOST:PORT of the user's Module gRPC service", "HOST:PORT"),
    _Setting("metrics", "METRICS_ADDR", "--metrics", "0.0.0.0:9100", "0.0.0.0:9100",
             "HOST:PORT serving Prometheus metrics; empty disables", "HOST:PORT"),
    _Setting("heartbeat_ms", "RAFT_HEARTBEAT_MS", "--heartbeat-ms", "50", "50",
             "leader heartbeat interval in milliseconds; also the core's tick", "MS"),
    _Setting("election_ms", "RAFT_ELECTION_MS", "--election-ms", "500", "500",
             "election timeout in milliseconds, at least 3 times the heartbeat", "MS"),
    _Setting("max_command_bytes", "RAFT_MAX_COMMAND_BYTES", "--max-command-bytes", "1MiB",
             "1MiB", "largest accepted command: bytes, or with a KiB/MiB/GiB suffix", "SIZE"),
    _Setting("max_pending", "RAFT_MAX_PENDING", "--max-pending", "10000", "10000",
             "commands waiting for commit before new ones get RESOURCE_EXHAUSTED", "N"),
    _Setting("snapshot_entries", "RAFT_SNAPSHOT_ENTRIES", "--snapshot-entries", "10000",
             "10000", "snapshot automatically after this many entries applied since the last",
             "N"),
    _Setting("snapshot_bytes", "RAFT_SNAPSHOT_BYTES", "--snapshot-bytes", "64MiB", "64MiB",
             "snapshot automatically after this many log bytes since the last", "SIZE"),
    _Setting("fsync", "RAFT_FSYNC", "--fsync", "true", "true",
             "fsync before acknowledging; false is unsafe (may lose committed data), "
             "for benchmarks only", "BOOL", boolean=True),
    _Setting("tls_cert", "TLS_CERT_FILE", "--tls-cert", None, "(no TLS)",
             "PEM certificate of this member; TLS needs cert, key and CA together", "PATH"),
    _Setting("tls_key", "TLS_KEY_FILE", "--tls-key", None, "(no TLS)",
             "PEM private key of the certificate", "PATH"),
    _Setting("tls_ca", "TLS_CA_FILE", "--tls-ca", None, "(no TLS)",
             "PEM CA bundle that every member's and client's certificate must chain to",
             "PATH"),
    _Setting("shutdown_timeout_s", "SHUTDOWN_TIMEOUT_S", "--shutdown-timeout", "10", "10",
             "seconds a graceful stop may take before the member exits anyway", "SECONDS"),
    _Setting("log_level", "LOG_LEVEL", "--log-level", "info", "info",
             "one of " + ", ".join(LOG_LEVELS), "LEVEL"),
)  # fmt: skip
_BY_NAME = {s.name: s for s in _SETTINGS}
_BY_FLAG = {s.flag: s for s in _SETTINGS}
_TLS_FILES = ("tls_cert", "tls_key", "tls_ca")


def reference_table() -> list[tuple[str, str, str, str]]:
    """(environment variable, flag, default, description) for every setting."""
    return [(s.env, s.flag, s.shown_default, s.help) for s in _SETTINGS]


def load_config(argv: list[str], environ: Mapping[str, str]) -> SidecarConfig:
    """Parse flags (which win) and environment variables; raise ConfigError if invalid.

    `--help` prints every setting and exits 0, as argparse does."""
    flags = vars(_parser().parse_args(argv))

    def raw(name: str) -> str | None:
        s = _BY_NAME[name]
        for value in (flags[name], environ.get(s.env)):
            if value is not None and (value.strip() or name == "metrics"):
                return value.strip()
        return s.default

    def parse[T](name: str, parser: Callable[[str], T]) -> T:
        value = raw(name)
        if value is None:
            _fail(name, f"required: {_BY_NAME[name].help}")
        try:
            return parser(value)
        except _Unusable as exc:
            _fail(name, str(exc))
        except ValueError as exc:
            _fail(name, f"expected {exc}, got {_quote(value)}")

    node_id = None if raw("node_id") is None else parse("node_id", _node_id)
    listen = parse("listen", _address)
    advertise = listen if raw("advertise") is None else parse("advertise", _address)
    if advertise.is_wildcard:
        reach = "expected HOST:PORT the other members can reach (e.g. raft-0.raft-peers:7000)"
        if raw("advertise") is None:
            _fail(
                "advertise",
                f"required when {_flagged('listen')} listens on every "
                f"interface ({listen}); {reach}",
            )
        _fail("advertise", f"{reach}, not an every-interface address, got {_quote(str(advertise))}")
    bootstrap = parse("bootstrap", _bool)
    join = parse("join", _address_list)
    if bootstrap and join:
        raise ConfigError(
            f"{_flagged('bootstrap')} and {_flagged('join')}: choose one: bootstrap starts a "
            "new cluster, join adds this member to an existing one"
        )
    metrics = parse("metrics", lambda v: _address(v) if v else None)
    if metrics is not None and metrics.port == listen.port and _may_overlap(metrics, listen):
        _fail(
            "metrics", f"port {metrics.port} is already used by {_flagged('listen')}; pick another"
        )
    heartbeat_ms = parse("heartbeat_ms", _int_between(1, 60_000, "milliseconds"))
    election_ms = parse("election_ms", _int_between(1, 600_000, "milliseconds"))
    if election_ms < 3 * heartbeat_ms:
        _fail(
            "election_ms",
            f"must be at least 3 times {_flagged('heartbeat_ms')} (3 x {heartbeat_ms} = "
            f"{3 * heartbeat_ms}) so followers do not start elections between heartbeats, "
            f"got {election_ms}",
        )
    tls_given = [name for name in _TLS_FILES if raw(name) is not None]
    tls_missing = [name for name in _TLS_FILES if name not in tls_given]
    if tls_given and tls_missing:
        verb = "is" if len(tls_given) == 1 else "are"
        raise ConfigError(
            f"{', '.join(map(_flagged, tls_missing))}: required when "
            f"{', '.join(map(_flagged, tls_given))} {verb} set; TLS needs the cert, key and "
            "CA files together, or none of them"
        )
    tls = None
    if tls_given:
        tls = TlsConfig(*(parse(name, _readable_file) for name in _TLS_FILES))
        _check_tls_files(tls)
    return SidecarConfig(
        node_id=node_id,
        listen=listen,
        advertise=advertise,
        bootstrap=bootstrap,
        data_dir=parse("data_dir", _path),
        join=join,
        auto_promote=parse("auto_promote", _bool),
        module=parse("module", _address),
        metrics=metrics,
        heartbeat_ms=heartbeat_ms,
        election_ms=election_ms,
        # One command is one log entry sent to every member in one message: keep it modest.
        max_command_bytes=parse("max_command_bytes", _size_between(1, 64 * MIB)),
        max_pending=parse("max_pending", _int_between(1, 10_000_000, "commands")),
        snapshot_entries=parse("snapshot_entries", _int_between(1, 10**12, "entries")),
        snapshot_bytes=parse("snapshot_bytes", _size_between(1, 1024 * GIB)),
        fsync=parse("fsync", _bool),
        tls=tls,
        shutdown_timeout_s=parse("shutdown_timeout_s", _seconds),
        log_level=parse("log_level", _log_level),
    )


def main_config_or_exit(argv: list[str], environ: Mapping[str, str]) -> SidecarConfig:
    """load_config, or print the one-line reason to stderr and exit with code 2."""
    try:
        return load_config(argv, environ)
    except ConfigError as exc:
        print(f"tinyraft sidecar: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of usage + error; name the variable when argparse names a flag.
        match = re.match(r"argument (--[a-z-]+)", message)
        if match and match.group(1) in _BY_FLAG:
            message = f"{_flagged(_BY_FLAG[match.group(1)].name)}{message[match.end() :]}"
        raise ConfigError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tinyraft sidecar",
        description="Run a tinyraft member. Each flag overrides its environment variable.",
        allow_abbrev=False,  # --list must not silently mean --listen
    )
    for s in _SETTINGS:
        parser.add_argument(
            s.flag,
            dest=s.name,
            metavar=s.metavar,
            help=f"{s.help} [env {s.env}; default {s.shown_default}]".replace("%", "%%"),
            # A bare boolean flag means true: `--bootstrap`.
            nargs="?" if s.boolean else None,
            const="true" if s.boolean else None,
        )
    return parser


def _fail(name: str, problem: str) -> NoReturn:
    raise ConfigError(f"{_flagged(name)}: {problem}")


def _flagged(name: str) -> str:
    s = _BY_NAME[name]
    return f"{s.env} ({s.flag})"


def _quote(value: str) -> str:
    # JSON escaping keeps control characters and odd bytes visible and on one line.
    shown = value if len(value) <= 100 else value[:100] + "..."
    return json.dumps(shown)


# Parsers: return the value, or raise ValueError("<the expected form>").


class _Unusable(ValueError):
    """The value has the right form but cannot be used; the message says why."""


def parse_member_id(value: str) -> str:
    """A member id as NODE_ID accepts it; ValueError says the expected form."""
    return _node_id(value)


def parse_address(value: str) -> Address:
    """HOST:PORT as every address setting accepts it; ValueError says the expected form."""
    return _address(value)


def _node_id(value: str) -> str:
    if not _NODE_ID.fullmatch(value):
        raise ValueError("1 to 63 characters from A-Z a-z 0-9 . _ -")
    return value


def _address(value: str) -> Address:
    form = "HOST:PORT (IPv6 as [ADDR]:PORT, port 1-65535)"
    host, sep, port_text = value.rpartition(":")
    if not sep or not _DIGITS.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(form)
    if host.startswith("[") and host.endswith("]"):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(form) from None
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(form)
    elif _IPV4ISH.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(form) from None
    return Address(host, int(port_text))


def _address_list(value: str) -> tuple[Address, ...]:
    if not value:
        return ()
    try:
        return tuple(_address(part.strip()) for part in value.split(","))
    except ValueError:
        raise ValueError(
            "comma-separated HOST:PORT (e.g. raft-0.raft:7000,raft-1.raft:7000)"
        ) from None


def _may_overlap(a: Address, b: Address) -> bool:
    return a.host == b.host or a.is_wildcard or b.is_wildcard


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("true/false, 1/0 or yes/no")


def _int_between(low: int, high: int, unit: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
            raise ValueError(f"a whole number of {unit} from {low} to {high}")
        return int(value)

    return parse


def _size_between(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        match = _SIZE.fullmatch(value)
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()] if match else 0
        if not low <= size <= high:
            raise ValueError(
                f"a size from {low} to {_format_size(high)}: bytes, or with a KiB, MiB or GiB "
                "suffix (e.g. 1048576, 1024KiB, 1MiB)"
            )
        return size

    return parse


def _format_size(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _seconds(value: str) -> float:
    if not _DECIMAL.fullmatch(value) or not 0 < float(value) <= 3600:
        raise ValueError("seconds, more than 0 and at most 3600 (e.g. 10 or 2.5)")
    return float(value)


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError("one of " + ", ".join(LOG_LEVELS))
    return value.lower()


def _path(value: str) -> Path:
    if "\0" in value:
        raise ValueError("a path without NUL characters")
    return Path(value)


def _check_tls_files(tls: TlsConfig) -> None:
    """Load the PEM files once, so a bad one is named now rather than failing the bind."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"{_flagged('tls_cert')} and {_flagged('tls_key')}: {tls.cert_file} and "
            f"{tls.key_file} are not a PEM certificate and its matching private key ({exc})"
        ) from None
    try:
        context.load_verify_locations(cafile=tls.ca_file)
    except (ssl.SSLError, ValueError) as exc:
        _fail("tls_ca", f"{tls.ca_file} is not a PEM CA certificate ({exc})")


def _readable_file(value: str) -> Path:
    path = _path(value)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise _Unusable(f"cannot read {_quote(value)}: {exc.strerror or exc}") from None
    return path

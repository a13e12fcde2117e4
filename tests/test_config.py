"""Sidecar configuration: flags over environment over defaults, and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.certs import CertAuthority

from tinyraft.server.config import (
    MIB,
    Address,
    ConfigError,
    load_config,
    main_config_or_exit,
    reference_table,
)

BASE = {"RAFT_DATA_DIR": "/var/lib/tinyraft", "NODE_ADVERTISE_ADDR": "raft-0.raft:7000"}
FLAG_OF = {env: flag for env, flag, _, _ in reference_table()}

# env var, value, SidecarConfig attribute, expected, another valid value
VALID = [
    ("NODE_ID", "raft-0", "node_id", "raft-0", "raft_9.x"),
    ("NODE_LISTEN_ADDR", "10.0.0.5:7001", "listen", Address("10.0.0.5", 7001), "[::]:7000"),
    ("NODE_ADVERTISE_ADDR", "[::1]:7002", "advertise", Address("::1", 7002), "b.c:1"),
    ("RAFT_BOOTSTRAP", "YES", "bootstrap", True, "0"),
    ("RAFT_DATA_DIR", "/data/raft", "data_dir", Path("/data/raft"), "/tmp/other"),
    ("RAFT_JOIN", "a:1, b.c:2", "join", (Address("a", 1), Address("b.c", 2)), "x:9"),
    ("RAFT_AUTO_PROMOTE", "no", "auto_promote", False, "true"),
    ("MODULE_ADDR", "localhost:7200", "module", Address("localhost", 7200), "m:1"),
    ("METRICS_ADDR", "127.0.0.1:9200", "metrics", Address("127.0.0.1", 9200), ""),
    ("RAFT_HEARTBEAT_MS", "20", "heartbeat_ms", 20, "10"),
    ("RAFT_ELECTION_MS", "900", "election_ms", 900, "600"),
    ("RAFT_MAX_COMMAND_BYTES", "512KiB", "max_command_bytes", 512 * 1024, "100"),
    ("RAFT_MAX_PENDING", "50", "max_pending", 50, "7"),
    ("RAFT_SNAPSHOT_ENTRIES", "123", "snapshot_entries", 123, "5"),
    ("RAFT_SNAPSHOT_BYTES", "2 GiB", "snapshot_bytes", 2 * 1024 * MIB, "1MiB"),
    ("RAFT_FSYNC", "False", "fsync", False, "true"),
    ("SHUTDOWN_TIMEOUT_S", "2.5", "shutdown_timeout_s", 2.5, "30"),
    ("LOG_LEVEL", "DEBUG", "log_level", "debug", "error"),
]
TLS_VARS = {"TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"}

# env var, invalid value
INVALID = [
    ("NODE_ID", "has space"),
    ("NODE_ID", "x" * 64),
    ("NODE_ID", "a/b"),
    *[
        ("NODE_LISTEN_ADDR", bad)
        for bad in ["abc", "host:0", "host:65536", ":7000", "[::1:7000", "::1:7000", "h:+1"]
    ],
    ("NODE_LISTEN_ADDR", "999.1.1.1:7000"),
    ("NODE_LISTEN_ADDR", "-host:7000"),
    ("NODE_ADVERTISE_ADDR", "0.0.0.0:7000"),
    ("NODE_ADVERTISE_ADDR", "nope"),
    ("RAFT_BOOTSTRAP", "maybe"),
    ("RAFT_BOOTSTRAP", "2"),
    ("RAFT_JOIN", "a:1,,b:2"),
    ("RAFT_JOIN", "a:1,b"),
    ("RAFT_AUTO_PROMOTE", "later"),
    ("MODULE_ADDR", "localhost"),
    ("METRICS_ADDR", "x:y"),
    ("METRICS_ADDR", "0.0.0.0:7000"),  # the listen port
    *[("RAFT_HEARTBEAT_MS", bad) for bad in ["0", "-5", "1.5", "abc", "99999999"]],
    ("RAFT_ELECTION_MS", "100"),  # below 3 heartbeats
    ("RAFT_ELECTION_MS", "x"),
    *[("RAFT_MAX_COMMAND_BYTES", bad) for bad in ["1MB", "0", "65MiB", "-1", "1.5MiB"]],
    ("RAFT_MAX_PENDING", "0"),
    ("RAFT_MAX_PENDING", "ten"),
    ("RAFT_SNAPSHOT_ENTRIES", "0"),
    ("RAFT_SNAPSHOT_BYTES", "1TB"),
    ("RAFT_FSYNC", "sometimes"),
    *[("SHUTDOWN_TIMEOUT_S", bad) for bad in ["0", "nan", "inf", "-1", "10s", "9999"]],
    ("LOG_LEVEL", "verbose"),
]


def load(argv=(), **env):
    return load_config(list(argv), {**BASE, **env})


def error_of(argv=(), **env) -> str:
    with pytest.raises(ConfigError) as caught:
        load(argv, **env)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_every_setting_is_covered_by_these_tests():
    assert {row[0] for row in reference_table()} == {v[0] for v in VALID} | TLS_VARS


def test_reference_table_rows_are_complete():
    for env, flag, default, description in reference_table():
        assert env.isupper() and flag.startswith("--") and default and description


def test_defaults():
    config = load_config([], {"RAFT_DATA_DIR": "/d", "NODE_LISTEN_ADDR": "127.0.0.1:7000"})
    assert config.node_id is None
    assert config.listen == config.advertise == Address("127.0.0.1", 7000)
    assert config.bootstrap is False and config.join == ()
    assert config.module == Address("127.0.0.1", 7100)
    assert config.metrics == Address("0.0.0.0", 9100)
    assert (config.heartbeat_ms, config.election_ms) == (50, 500)
    assert (config.tick_ms, config.heartbeat_ticks, config.election_ticks) == (50, 1, 10)
    assert config.max_command_bytes == MIB
    assert (config.max_pending, config.snapshot_entries) == (10000, 10000)
    assert config.snapshot_bytes == 64 * MIB
    assert config.fsync is True and config.tls is None
    assert config.shutdown_timeout_s == 10 and config.log_level == "info"


@pytest.mark.parametrize(("env", "value", "attr", "expected", "other"), VALID)
def test_setting_from_env_and_flag(env, value, attr, expected, other):
    assert getattr(load(**{env: value}), attr) == expected
    assert getattr(load([f"{FLAG_OF[env]}={value}"]), attr) == expected
    # the flag wins over the environment
    assert getattr(load([FLAG_OF[env], value], **{env: other}), attr) == expected


@pytest.mark.parametrize(("env", "value"), INVALID)
def test_invalid_value_names_variable_and_flag(env, value):
    prefix = f"{env} ({FLAG_OF[env]}): "
    assert error_of(**{env: value}).startswith(prefix)
    assert error_of([f"{FLAG_OF[env]}={value}"]).startswith(prefix)


def test_error_shows_what_was_given_and_what_is_expected():
    message = error_of(NODE_LISTEN_ADDR="abc")
    assert message.startswith("NODE_LISTEN_ADDR (--listen): expected HOST:PORT")
    assert message.endswith('got "abc"')
    assert "3 times RAFT_HEARTBEAT_MS" in error_of(RAFT_ELECTION_MS="100")


def test_control_characters_in_a_value_stay_on_one_line():
    assert r'got "a\nb\u2028c"' in error_of(LOG_LEVEL="a\nb\u2028c")


def test_data_dir_is_required():
    assert error_of(RAFT_DATA_DIR="").startswith("RAFT_DATA_DIR (--data-dir): required")


def test_advertise_is_required_when_listening_on_every_interface():
    env = {"RAFT_DATA_DIR": "/d"}
    for listen in ("0.0.0.0:7000", "[::]:7000"):
        with pytest.raises(ConfigError, match=r"^NODE_ADVERTISE_ADDR \(--advertise\): required"):
            load_config(["--listen", listen], env)
    with pytest.raises(ConfigError, match=r"NODE_LISTEN_ADDR \(--listen\)"):
        load_config([], env)  # the default listen address is 0.0.0.0:7000


def test_ipv6_addresses_print_with_brackets():
    assert str(load(NODE_ADVERTISE_ADDR="[fd00::1]:7000").advertise) == "[fd00::1]:7000"


def test_empty_values_count_as_not_set_except_metrics():
    config = load(NODE_ID="", RAFT_HEARTBEAT_MS=" ", METRICS_ADDR="")
    assert config.node_id is None and config.heartbeat_ms == 50
    assert config.metrics is None


def test_bare_boolean_flag_means_true():
    assert load(["--bootstrap"]).bootstrap is True
    assert load(["--fsync"], RAFT_FSYNC="false").fsync is True


def test_derived_ticks():
    config = load(RAFT_HEARTBEAT_MS="20", RAFT_ELECTION_MS="110")
    assert (config.tick_ms, config.heartbeat_ticks, config.election_ticks) == (20, 1, 5)


def test_bootstrap_and_join_together_is_an_error():
    message = error_of(RAFT_BOOTSTRAP="true", RAFT_JOIN="raft-1.raft:7000")
    assert "RAFT_BOOTSTRAP (--bootstrap)" in message and "RAFT_JOIN (--join)" in message


def test_unknown_and_abbreviated_flags_are_errors():
    assert "--nope" in error_of(["--nope", "1"])
    assert "--list" in error_of(["--list", "1.2.3.4:5"])  # no silent prefix matching


def test_flag_without_its_value_names_the_variable():
    assert error_of(["--heartbeat-ms"]).startswith("RAFT_HEARTBEAT_MS (--heartbeat-ms): ")


@pytest.fixture
def pem_files(tmp_path):
    files = CertAuthority.create(tmp_path, "test-ca").issue("member")
    return {
        "TLS_CERT_FILE": str(files.cert),
        "TLS_KEY_FILE": str(files.key),
        "TLS_CA_FILE": str(files.ca),
    }


def test_unusable_tls_files_are_named(pem_files, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PLACEHOLDER-----\n")
    message = error_of(**{**pem_files, "TLS_KEY_FILE": str(garbage)})
    assert "TLS_CERT_FILE (--tls-cert) and TLS_KEY_FILE (--tls-key)" in message
    message = error_of(**{**pem_files, "TLS_CA_FILE": str(garbage)})
    assert message.startswith("TLS_CA_FILE (--tls-ca)") and "garbage.pem" in message


def test_tls_from_env_and_flags(pem_files):
    tls = load(**pem_files).tls
    assert tls is not None
    assert str(tls.cert_file) == pem_files["TLS_CERT_FILE"]
    assert str(tls.key_file) == pem_files["TLS_KEY_FILE"]
    assert str(tls.ca_file) == pem_files["TLS_CA_FILE"]
    argv = [f"{FLAG_OF[env]}={path}" for env, path in pem_files.items()]
    assert load(argv).tls == tls


def test_partial_tls_names_the_missing_files(pem_files):
    message = error_of(TLS_CERT_FILE=pem_files["TLS_CERT_FILE"])
    assert message.startswith("TLS_KEY_FILE (--tls-key), TLS_CA_FILE (--tls-ca): required")
    assert "TLS_CERT_FILE (--tls-cert)" in message


def test_unreadable_tls_file_names_the_path(pem_files, tmp_path):
    missing = str(tmp_path / "nowhere.pem")
    message = error_of(**{**pem_files, "TLS_CA_FILE": missing})
    assert message.startswith("TLS_CA_FILE (--tls-ca): cannot read") and missing in message
    message = error_of(**{**pem_files, "TLS_KEY_FILE": str(tmp_path)})  # a directory
    assert message.startswith("TLS_KEY_FILE (--tls-key): cannot read") and str(tmp_path) in message


def run_main(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import os, sys\n"
        "from tinyraft.server.config import main_config_or_exit\n"
        "main_config_or_exit(sys.argv[1:], os.environ)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in {e for e, *_ in reference_table()}}
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "env", "start"),
    [
        ([], {"RAFT_DATA_DIR": "/d", "NODE_LISTEN_ADDR": "abc"}, "NODE_LISTEN_ADDR (--listen): "),
        (["--listen", "abc", "--data-dir", "/d"], {}, "NODE_LISTEN_ADDR (--listen): "),
        (["--advertise", "a:1"], {}, "RAFT_DATA_DIR (--data-dir): "),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_main_exits_2_with_one_line(argv, env, start):
    done = run_main(*argv, **env)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"tinyraft sidecar: {start}")


def test_help_lists_every_flag_with_its_variable_and_default():
    done = run_main("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # undo argparse's line wrapping
    for env, flag, default, _ in reference_table():
        assert flag in text and f"env {env}; default {default}" in text


def test_main_returns_the_config_when_valid():
    assert main_config_or_exit([], BASE).data_dir == Path(BASE["RAFT_DATA_DIR"])


ADDRESS_VARS = [
    "NODE_LISTEN_ADDR",
    "NODE_ADVERTISE_ADDR",
    "MODULE_ADDR",
    "METRICS_ADDR",
    "RAFT_JOIN",
]
garbage = st.one_of(
    st.text(),
    st.from_regex(r"\[?[0-9a-zA-Z:.%_-]{0,20}\]?:[+-]?[0-9]{0,7}(,.{0,5})?", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(var=st.sampled_from(ADDRESS_VARS), value=garbage, as_flag=st.booleans())
def test_garbage_addresses_only_ever_raise_config_error(var, value, as_flag):
    try:
        if as_flag:
            load([f"{FLAG_OF[var]}={value}"])
        else:
            load(**{var: value})
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1
        # a valid listen port can collide with the default metrics port
        assert f"{var} ({FLAG_OF[var]})" in str(exc) or "METRICS_ADDR (--metrics)" in str(exc)

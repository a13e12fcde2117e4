"""The container images (images/*.Dockerfile) and the Kubernetes examples
(examples/kubernetes/) agree with the code that runs them.

There is no Docker engine, no hadolint and no Kubernetes cluster here, so:
- each Dockerfile is parsed and checked: a pinned slim base, multi-stage with nothing
  built or installed in the final stage, a numeric non-root USER after the last RUN,
  exec-form ENTRYPOINT/CMD whose program and subcommand really run (as processes from
  this venv), EXPOSEd ports, UID/GID and data dir equal to what the operator builds,
  OCI labels, and dependencies that cover everything the image's code imports;
- every example object is validated: Kubernetes objects with kubernetes-validate
  (strict), the RaftCluster with the CRD's schema and CEL rules, the operator's own
  spec parser, and the objects the operator would build from it;
- the client script in the example ConfigMap runs as a real process against a real
  local 3-member cluster."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as metadata
import json
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import tinyraft
from shared_cluster import formed_cluster
from test_operator_builders import K8S_VERSIONS
from test_operator_crd import admit
from tinyraft.caller import BlockingCaller
from tinyraft.local import LocalCluster, free_port
from tinyraft_operator import builders
from tinyraft_operator.settings import DEFAULT_IMAGE, GRPC_PORT, METRICS_PORT, Settings
from tinyraft_operator.spec import RESERVED_CONTAINER, ClusterSpec, parse

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
EXAMPLES = ROOT / "examples" / "kubernetes"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = tinyraft.__version__
VENV_BIN = Path(sys.executable).parent

# Dockerfile -> image repository (the tag is the package version).
REPOSITORIES = {
    "sidecar.Dockerfile": "tinyraft/tinyraft",
    "operator.Dockerfile": "tinyraft/operator",
    "kv-example.Dockerfile": "tinyraft/kv-example",
}
# Where each image's code lives, and the pyproject extras it must be installed with.
SOURCES = {
    "sidecar.Dockerfile": (["sidecar/tinyraft"], set()),
    "operator.Dockerfile": (["sidecar/tinyraft", "operator/tinyraft_operator"], {"operator"}),
    "kv-example.Dockerfile": (["sidecar/tinyraft"], set()),
}
BUILD_TOOLS = {"gcc", "g++", "cc", "clang", "make", "cmake", "build-essential", "libc6-dev",
               "python3-dev", "libpython3-dev", "git", "pkg-config", "autoconf", "automake"}  # fmt: skip
TITLES = {
    "sidecar.Dockerfile": "tinyraft",
    "operator.Dockerfile": "tinyraft-operator",
    "kv-example.Dockerfile": "tinyraft-kv-example",
}
KV_IMAGE = f"{REPOSITORIES['kv-example.Dockerfile']}:{VERSION}"


# --- a small Dockerfile parser -----------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def pairs(self, keyword: str) -> dict[str, str]:
        """KEY=VALUE pairs of every ENV, LABEL or ARG (ARG without a default: "")."""
        out: dict[str, str] = {}
        for ins in self.all(keyword):
            for word in shlex.split(ins.args):
                key, eq, value = word.partition("=")
                assert eq or keyword == "ARG", f"line {ins.line}: {keyword} {word}: use KEY=VALUE"
                out[key] = value
        return out


def instructions(text: str) -> list[Instruction]:
    """Comments and blank lines dropped (also inside a continuation, as Docker does),
    backslash continuations joined, then split into keyword and arguments."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(parts).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, f"a continuation from line {start} never ends"
    return out


@dataclass
class Dockerfile:
    name: str
    stages: list[Stage]
    text: str

    @classmethod
    def load(cls, name: str) -> Dockerfile:
        text = (IMAGES / name).read_text()
        stages: list[Stage] = []
        for ins in instructions(text):
            if ins.keyword == "FROM":
                words = [w for w in ins.args.split() if not w.startswith("--")]
                assert len(words) == 1 or (len(words) == 3 and words[1].lower() == "as"), ins
                stages.append(Stage(words[0], words[2] if len(words) == 3 else None))
            elif ins.keyword == "ARG" and not stages:
                continue  # a global ARG, for FROM lines only
            else:
                assert stages, f"{name}:{ins.line}: {ins.keyword} before the first FROM"
                stages[-1].instructions.append(ins)
        return cls(name, stages, text)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def exec_form(self, keyword: str) -> list[str]:
        found = self.final.all(keyword)
        assert len(found) == 1, f"{self.name}: one {keyword} in the final stage, got {found}"
        value = json.loads(found[0].args)  # shell form would not be JSON
        assert isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        return value

    @property
    def argv(self) -> list[str]:
        """What `docker run IMAGE` executes."""
        return self.exec_form("ENTRYPOINT") + self.exec_form("CMD")

    @property
    def user(self) -> tuple[int, int]:
        (ins,) = self.final.all("USER")
        match = re.fullmatch(r"(\d+):(\d+)", ins.args)
        assert match, f"{self.name}: USER must be numeric UID:GID, got {ins.args!r}"
        return int(match[1]), int(match[2])

    @property
    def exposed(self) -> set[int]:
        ports = set()
        for ins in self.final.all("EXPOSE"):
            for word in ins.args.split():
                port, _, proto = word.partition("/")
                assert proto in ("", "tcp"), word
                ports.add(int(port))
        return ports


@cache
def dockerfile(name: str) -> Dockerfile:
    return Dockerfile.load(name)


ALL = sorted(REPOSITORIES)


# --- the example objects ---------------------------------------------------------------


def example_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return objects


def example(kind: str) -> dict[str, Any]:
    (obj,) = [o for o in example_objects() if o["kind"] == kind]
    return obj


def example_spec() -> ClusterSpec:
    """The example RaftCluster as the operator parses it once the API server stored it."""
    rc = example("RaftCluster")
    stored = {**rc, "metadata": {**rc["metadata"], "namespace": "default", "uid": "u-1"}}
    return parse(stored)


def sidecar_of(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    (c,) = [c for c in containers if c["name"] == RESERVED_CONTAINER]
    return c


def listen_port(args: list[str]) -> tuple[str, int]:
    address = args[args.index("--listen") + 1]
    host, _, port = address.rpartition(":")
    return host, int(port)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


def local_program(program: str) -> str:
    """The image's program in this venv: `python`, a console script of pyproject, kopf."""
    scripts = PYPROJECT["project"]["scripts"]
    assert program in {"python", "kopf", *scripts}, f"{program!r}: not a program the image has"
    return sys.executable if program == "python" else str(VENV_BIN / program)


# --- Dockerfiles -----------------------------------------------------------------------


def test_there_is_one_dockerfile_per_image() -> None:
    assert sorted(p.name for p in IMAGES.glob("*Dockerfile*")) == ALL
    assert f"{REPOSITORIES['sidecar.Dockerfile']}:{VERSION}" == DEFAULT_IMAGE


def test_every_base_is_one_pinned_slim_python_whose_version_the_package_supports() -> None:
    bases = set()
    for name in ALL:
        d = dockerfile(name)
        assert len(d.stages) >= 2, f"{name}: build in a builder stage, ship a final one"
        for stage in d.stages:
            match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-([a-z]+)(@sha256:[0-9a-f]{64})?",
                                 stage.image)  # fmt: skip
            assert match, f"{name}: FROM {stage.image}: pin an exact python:X.Y.Z-slim-<debian> tag"
            bases.add(stage.image)
        assert "slim" in d.final.image and d.final.name is None
    assert len(bases) == 1, f"one base for every stage of every image, got {bases}"
    (base,) = bases
    wanted = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert wanted
    minor = tuple(map(int, re.findall(r"\d+", base)[:2]))
    assert minor >= (int(wanted[1]), int(wanted[2]))


@pytest.mark.parametrize("name", ALL)
def test_the_final_stage_builds_nothing_and_runs_as_a_numeric_non_root_user(name: str) -> None:
    d = dockerfile(name)
    final = d.final.instructions
    for ins in d.final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", ins.args))
        assert not words & BUILD_TOOLS, f"{name}:{ins.line}: build tools in the final stage"
        assert not re.search(r"\bpip\b.*\binstall\b", ins.args), f"{name}:{ins.line}: builder's job"
    for ins in d.final.all("COPY") + d.final.all("ADD"):
        assert ins.keyword == "COPY" and ins.args.startswith("--from=builder "), (
            f"{name}:{ins.line}: the final stage only copies the builder's venv"
        )
    assert d.final.all("ADD") == []
    uid, gid = d.user
    assert uid != 0 and gid != 0
    user_at = [i.keyword for i in final].index("USER")
    assert all(i.keyword not in ("RUN", "COPY", "ADD") for i in final[user_at + 1 :]), (
        f"{name}: USER must come after the last RUN/COPY"
    )
    # Every container of a RaftCluster pod runs as the operator's UID; the operator's
    # own image uses the same one.
    assert (uid, gid) == (builders.NON_ROOT_UID, builders.NON_ROOT_UID)


@pytest.mark.parametrize("name", ALL)
def test_labels_env_and_venv(name: str) -> None:
    d = dockerfile(name)
    args = d.final.pairs("ARG")
    assert args["VERSION"] == VERSION == PYPROJECT["project"]["version"]
    labels = d.final.pairs("LABEL")
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.source"] == "${SOURCE}" and args["SOURCE"]
    assert labels["org.opencontainers.image.title"] == TITLES[name]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    env = d.final.pairs("ENV")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    (copy,) = d.final.all("COPY")
    _, source, target = copy.args.split()
    assert source == target and env["PATH"].startswith(f"{target}/bin:")
    # The builder installs the wheel into that venv, with the extras this image needs.
    (install,) = [i for i in d.stages[0].all("RUN") if "install" in i.args]
    assert f"--python {target}/bin/python" in install.args
    extras = set(re.findall(r"\.whl\)?\"?\[([a-z,-]+)\]", install.args))
    assert extras == SOURCES[name][1]
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


@cache
def _owners() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # slow: reads every installed distribution


def _distributions(requirements: list[str]) -> set[str]:
    """Every distribution installing these requirements pulls in (from this venv's
    metadata, so it has to be installed here)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return {name for name, _ in seen}


@pytest.mark.parametrize("name", ALL)
def test_the_image_installs_everything_its_code_imports(name: str) -> None:
    roots, extras = SOURCES[name]
    project = PYPROJECT["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    installed = _distributions(wanted)
    owners = _owners()
    imports: set[str] = set()
    for root in roots:
        for path in (ROOT / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imports |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imports.add(node.module.split(".")[0])
    first_party = {Path(r).name for r in SOURCES["operator.Dockerfile"][0]}
    third_party = imports - set(sys.stdlib_module_names) - first_party
    assert third_party, "the import scan found nothing: it is broken"
    missing = {
        module
        for module in third_party
        if not {canonicalize_name(d) for d in owners.get(module, [])} & installed
    }
    assert not missing, f"{name}: imported but not installed by its requirements: {missing}"


@pytest.mark.parametrize("name", ALL)
def test_the_entrypoint_program_and_its_options_exist(name: str) -> None:
    argv = dockerfile(name).argv
    result = run([local_program(argv[0]), *argv[1:], "--help"])
    assert result.returncode == 0, result.stderr
    for option in argv[1:]:
        if option.startswith("--"):
            assert option.split("=")[0] in result.stdout, f"{name}: {option} unknown"


def test_the_operator_image_runs_the_operator_the_way_the_tests_do() -> None:
    d = dockerfile("operator.Dockerfile")
    module = d.exec_form("ENTRYPOINT")[-1]
    assert d.exec_form("ENTRYPOINT") == ["python", "-m", "kopf", "run", "-m", module]
    assert "--all-namespaces" in d.exec_form("CMD")
    fixture = (ROOT / "tests" / "k8s_fixture.py").read_text()
    # OperatorProcess starts it the same way.
    assert re.search(rf'"kopf",\s*"run",\s*"-m",\s*"{module}"', fixture)
    check = f"import sys, kopf, {module}; assert '{module}.handlers' in sys.modules"
    result = run([sys.executable, "-c", check])
    assert result.returncode == 0, result.stderr
    # Ports: the operator's metrics (its settings' default) and kopf's liveness endpoint.
    metrics_port = int(Settings().metrics_addr.rpartition(":")[2])
    (liveness,) = [a for a in d.exec_form("CMD") if a.startswith("--liveness=")]
    match = re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)/\w+", liveness)
    assert match, liveness
    liveness_port = int(match[1])
    assert d.exposed == {metrics_port, liveness_port}


def test_the_sidecar_image_is_the_container_the_operator_builds() -> None:
    d = dockerfile("sidecar.Dockerfile")
    spec = example_spec()
    sts = builders.stateful_set(spec, Settings(), spec.replicas)
    pod = sts["spec"]["template"]["spec"]
    container = sidecar_of(sts)
    assert container["image"] == DEFAULT_IMAGE  # what `docker build -t` must tag
    assert d.argv == container["command"]  # `docker run` does what the pod does
    assert (
        d.exposed == {p["containerPort"] for p in container["ports"]} == {GRPC_PORT, METRICS_PORT}
    )
    uid, gid = d.user
    security = pod["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, gid, gid)
    # The data dir: mounted where the image created it, owned by that user.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == builders.DATA_VOLUME]
    assert mount["mountPath"] == builders.DATA_MOUNT
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAFT_DATA_DIR"].startswith(builders.DATA_MOUNT + "/")
    assert any(
        re.search(rf"install -d -o {uid} -g {gid} -m 07[0-7]0 {re.escape(builders.DATA_MOUNT)}$",
                  ins.args)
        for ins in d.final.all("RUN")
    ), "the image must create the data dir, owned by its user"  # fmt: skip
    # The root filesystem is read-only: SQLite's temporary files go to the volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert d.final.pairs("ENV")["SQLITE_TMPDIR"].startswith(builders.DATA_MOUNT)


def test_the_kv_image_serves_the_module_where_the_sidecar_calls_it() -> None:
    d = dockerfile("kv-example.Dockerfile")
    argv = d.argv
    assert argv[:3] == ["tinyraft", "example", "kv"]
    host, port = listen_port(argv)
    assert host == "127.0.0.1"  # the pod's loopback: only its own sidecar can call it
    assert d.exposed == {port} == {example_spec().module_port}
    # It really serves: start it as the image would, on a free port.
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [local_program(argv[0]), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("module kv listening on 127.0.0.1:"), line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore matching, enough for this file: a path is ignored when it or a
    parent matches the last matching pattern ("**/" matches at any depth; "!" re-includes)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        for candidate in candidates:
            tails = ["/".join(candidate.split("/")[i:]) for i in range(candidate.count("/") + 1)]
            if fnmatch.fnmatchcase(candidate, pat) or (
                pat.startswith("**/") and any(fnmatch.fnmatchcase(t, pat[3:]) for t in tails)
            ):
                verdict = not negate
    return verdict


def test_dockerignore_keeps_junk_out_and_what_the_builds_copy_in() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for junk in [".venv/bin/python", ".git/HEAD", ".tinyraft-local/n1/data", ".pytest_cache/x",
                 "sidecar/tinyraft/__pycache__/cli.cpython-313.pyc", "tinyraft.egg-info/PKG-INFO",
                 ".mypy_cache/x", ".ruff_cache/x", ".hypothesis/x", ".bench_tmp/x"]:  # fmt: skip
        assert _ignored(junk, patterns), f".dockerignore lets {junk} into the build context"
    for name in ALL:
        for ins in dockerfile(name).stages[0].all("COPY"):
            assert not ins.args.startswith("--from")
            *sources, _ = ins.args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}:{ins.line}: {source} does not exist"
                files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if f.is_file() and "__pycache__" not in rel:
                        assert not _ignored(rel, patterns), f".dockerignore drops {rel}"


def test_the_readme_builds_each_image_under_the_name_the_manifests_use() -> None:
    readme = (ROOT / "README.md").read_text()
    built = dict(re.findall(r"docker build -f images/(\S+) -t (\S+) \.", readme))
    assert built == {name: f"{repo}:{VERSION}" for name, repo in REPOSITORIES.items()}
    assert built["sidecar.Dockerfile"] == DEFAULT_IMAGE
    assert "tests/test_images.py" in readme
    assert "examples/kubernetes/" in readme


# --- examples/kubernetes ---------------------------------------------------------------


def test_the_examples_hold_a_raftcluster_and_a_client() -> None:
    kinds = sorted(o["kind"] for o in example_objects())
    assert kinds == ["ConfigMap", "Pod", "RaftCluster"]
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.glob("*.yaml"):
        assert path.name in readme


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_example_object_is_valid(version: str) -> None:
    for obj in example_objects():
        if obj["kind"] == "RaftCluster":
            assert admit(obj) == []  # the CRD's schema and CEL rules
            spec = example_spec()  # the operator's parser
            # ... and everything the operator builds from it is valid Kubernetes.
            for built in [
                builders.stateful_set(spec, Settings(), spec.replicas),
                builders.peer_service(spec),
                builders.client_service(spec),
                builders.pod_disruption_budget(spec),
            ]:
                kubernetes_validate.validate(built, version, strict=True)
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_raftcluster_runs_the_kv_image_where_its_sidecar_looks() -> None:
    rc = example("RaftCluster")
    spec = example_spec()
    assert spec.name == "kv" and spec.replicas == 3
    assert re.fullmatch(r"\d+(Mi|Gi)", spec.storage_size)
    assert spec.pdb_max_unavailable == builders.pdb_max_unavailable(spec) == 1  # not clamped
    (app,) = rc["spec"]["template"]["spec"]["containers"]
    assert app["image"] == KV_IMAGE
    sts = builders.stateful_set(spec, Settings(), spec.replicas)
    env = {e["name"]: e.get("value") for e in sidecar_of(sts)["env"]}
    host, port = listen_port(app["args"])
    assert env["MODULE_ADDR"] == f"{host}:{port}"
    assert app["args"] == dockerfile("kv-example.Dockerfile").exec_form("CMD")
    assert sidecar_of(sts)["image"] == DEFAULT_IMAGE


def test_the_client_pod_runs_the_configmap_script_against_the_client_service() -> None:
    pod, config = example("Pod"), example("ConfigMap")
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    uid, gid = dockerfile("kv-example.Dockerfile").user
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (
        uid,
        gid,
    )
    (container,) = spec["containers"]
    assert container["image"] == KV_IMAGE
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    (key,) = config["data"]
    assert container["command"] == ["python", f"{mount['mountPath']}/{key}"]
    service = builders.client_service(example_spec())
    env = {e["name"]: e["value"] for e in container["env"]}
    port = service["spec"]["ports"][0]["port"]
    assert env["TINYRAFT_ADDRESS"] == f"{service['metadata']['name']}:{port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = formed_cluster(tmp_path_factory.mktemp("images-kv"), 3)
    try:
        yield c
    finally:
        c.close()


def test_the_client_script_works_against_a_real_cluster(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    config = example("ConfigMap")
    (key,) = config["data"]
    script = tmp_path / key
    script.write_text(config["data"][key])
    env = {k: v for k, v in os.environ.items() if k != "TINYRAFT_ADDRESS"}
    missing = run([sys.executable, str(script)], env=env)
    assert missing.returncode == 2 and "TINYRAFT_ADDRESS" in missing.stderr
    member = cluster.members["n2"]  # any member answers; followers forward
    result = run([sys.executable, str(script)], env={**env, "TINYRAFT_ADDRESS": member.address})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "ok"
    pairs = runpy.run_path(str(script), run_name="kv_client")["PAIRS"]
    assert len(pairs) >= 3
    with BlockingCaller(cluster.addresses()) as caller:
        for k, value in pairs.items():
            answer = caller.query(json.dumps({"op": "get", "key": k}).encode())
            assert json.loads(answer) == {"value": value}

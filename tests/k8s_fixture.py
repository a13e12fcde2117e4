"""A Kubernetes stand-in for the operator's integration tests.

- ApiServer: kmock's Kubernetes emulator (a real HTTP API in a background thread),
  taught the bits of an API server the operator and kopf rely on: uid,
  resourceVersion (with JSON-patch `test` conflicts), generation, creationTimestamp.
- Cluster (the "nodes"): one thread plays the StatefulSet controller (pods and claims
  for the ordinals, OnDelete: only missing pods are created), the kubelet (a real
  sidecar and a real kv Module process per pod on loopback, restarted when they die,
  stopped with SIGTERM when the pod is deleted; readiness from the sidecar's gRPC
  health service) and the garbage collector (owner references).
- OperatorProcess: the real operator, `python -m kopf run -m tinyraft_operator
  --all-namespaces`, against the emulator through a kubeconfig.

Pod DNS names cannot resolve here: every pod gets loopback ports, and the address
map (pod DNS name -> 127.0.0.1:port) is given to the operator through
TINYRAFT_OPERATOR_ADDRESS_OVERRIDES and applied by the kubelet to the sidecar's env.
Whatever image the user's container names, the kubelet runs the kv example Module."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import jsonpatch
import kmock
import requests
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kmock._internal import dicts as kmock_dicts

from tinyraft.local import free_port
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "charts" / "tinyraft-operator" / "crds" / "raftcluster.yaml"
RC_API = "/apis/tinyraft.dev/v1alpha1"


def _dies_with_parent(argv: list[str]) -> list[str]:
    """argv, run so that it gets SIGKILL when the test process goes away, however it goes.

    util-linux's setpriv sets PR_SET_PDEATHSIG and execs. Not a preexec_fn: Python code
    run between fork and exec in this multi-threaded process can deadlock the child, and
    Popen with it (a CI run hung for ever on one)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *argv]


def wait_for[T](condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until condition() is truthy; on timeout fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # a condition may fail while things settle
            last_error = exc
        if time.monotonic() > deadline:
            extra = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


# --- the API server --------------------------------------------------------------------


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata a real API server maintains."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._version = 0
        self._write_lock = asyncio.Lock()
        # {who: {(api group, resource[/subresource], RBAC verb)}}
        self.verbs_by_who: dict[str, set[tuple[str, str, str]]] = {}

    async def __call__(self, raw_request: Any) -> Any:
        # kmock keeps every request for assertions and scans them on each new one; these
        # tests assert on objects, not requests: keep only the recent ones (requests still
        # in flight are among them), or serving slows down as the test goes on.
        for holder in (self, *self._payloads):
            if len(holder._requests) > 200:
                del holder._requests[:-100]
        return await super().__call__(raw_request)

    async def _serve_version(self, request: Any) -> Any:
        # kmock names the core group version "/v1"; an API server (and Helm) says "v1".
        payload = await super()._serve_version(request)
        if payload.get("groupVersion") == "/v1":
            payload["groupVersion"] = "v1"
        return payload

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.resource.plural:  # not discovery
            self._record(request)
        if request.resource is None or request.action not in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
        ):
            return await super()._handle(request)
        async with self._write_lock:
            try:
                self._stamp(request)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise kmock.KubernetesError(409, "Conflict", f"conflict: {exc}") from None
            except jsonpatch.JsonPatchException as exc:
                raise kmock.KubernetesError(422, "Invalid", f"bad patch: {exc}") from None
            return await super()._handle(request)

    def _record(self, request: Any) -> None:
        """Note the RBAC verb of the request, by who made it: the bearer token, else the
        user agent's product (client-go sends no token over plain HTTP)."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        who = token or request.headers.get("User-Agent", "").split("/")[0]
        method, res = request.method.value, request.resource
        if method == "GET":
            verb = "get" if request.name else "watch" if request.params.get("watch") else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "delete")
        plural = res.plural + (f"/{request.subresource}" if request.subresource else "")
        self.verbs_by_who.setdefault(who, set()).add((res.group or "", plural, verb))

    def _stamp(self, request: Any) -> None:
        data = request.data
        if request.action == kmock.action.CREATE:
            meta = data.setdefault("metadata", {})
            key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
            if key in self.objects and not self.objects[key].deleted:
                # the reason clients (Helm: CRDs already installed) test for
                raise kmock.KubernetesError(409, "AlreadyExists", f"{meta.get('name')} exists")
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._next_version()
            meta["generation"] = 1
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # the emulator answers 404
        history = self.objects[key].history
        if len(history) > 20:  # every version is kept; the tests need the latest only
            del history[:-10]
        old = copy.deepcopy(self.objects[key].raw)
        if isinstance(data, list):
            new = jsonpatch.apply_patch(old, data, in_place=False)
        else:
            new = kmock_dicts.patch_dict(copy.deepcopy(old), data or {})
        version = self._next_version()
        generation = int(old.get("metadata", {}).get("generation") or 1)
        if request.subresource != "status" and new.get("spec") != old.get("spec"):
            generation += 1
        if isinstance(data, list):
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            data.append({"op": "add", "path": "/metadata/generation", "value": generation})
        else:
            meta = data.setdefault("metadata", {}) if isinstance(data, dict) else {}
            if meta is None:
                meta = data["metadata"] = {}
            meta["resourceVersion"] = version
            meta["generation"] = generation


_RESOURCES = [
    ("v1/namespaces", "Namespace", False, []),
    ("v1/events", "Event", True, []),
    ("v1/pods", "Pod", True, ["status"]),
    ("v1/services", "Service", True, ["status"]),
    ("v1/persistentvolumeclaims", "PersistentVolumeClaim", True, ["status"]),
    ("v1/secrets", "Secret", True, []),
    ("apps/v1/statefulsets", "StatefulSet", True, ["status", "scale"]),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True, ["status"]),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, []),
    # what the Helm chart installs
    ("v1/serviceaccounts", "ServiceAccount", True, []),
    ("v1/configmaps", "ConfigMap", True, []),
    ("apps/v1/deployments", "Deployment", True, ["status", "scale"]),
    ("rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole", False, []),
    ("rbac.authorization.k8s.io/v1/clusterrolebindings", "ClusterRoleBinding", False, []),
    ("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", False, []),  # as its CRD: no /status
    ("monitoring.coreos.com/v1/servicemonitors", "ServiceMonitor", True, []),
    ("monitoring.coreos.com/v1/podmonitors", "PodMonitor", True, []),
    ("monitoring.coreos.com/v1/prometheusrules", "PrometheusRule", True, []),
]
_VERBS = ["create", "delete", "get", "list", "patch", "watch"]


class ApiServer:
    """The emulator on a loopback port, served from its own thread and event loop."""

    def __init__(self, install_crd: bool = True) -> None:
        self.crd = yaml.safe_load(CRD_PATH.read_text())
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emulator: _Emulator | None = None
        self.url = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"kmock did not start: {self._error!r}")
        self.api = Api(self.url)
        if install_crd:  # else Helm installs it from the chart
            self.api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", self.crd)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # pragma: no cover - shown by __init__
            self._error = exc
            traceback.print_exc()
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with _Emulator() as emulator, kmock.Server(emulator) as server:
            self._emulator = emulator
            for resource, kind, namespaced, subresources in _RESOURCES:
                emulator.resources[resource] = kmock.ResourceInfo(
                    kind=kind, namespaced=namespaced, subresources=subresources, verbs=_VERBS
                )
            names = self.crd["spec"]["names"]
            emulator.resources["tinyraft.dev/v1alpha1/raftclusters"] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names["singular"],
                shortnames=names["shortNames"],
                namespaced=True,
                subresources=["status"],
                verbs=_VERBS,
            )
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def purge(self, namespace: str) -> None:
        """Forget every object of a namespace, history included (between tests: the
        emulator keeps every version of every object, and lists scan them all)."""
        assert self._loop is not None and self._emulator is not None
        emulator = self._emulator

        async def purge() -> None:
            for key in list(emulator.objects):
                if key[1] == namespace:
                    del emulator.objects[key]

        asyncio.run_coroutine_threadsafe(purge(), self._loop).result(10)

    def write_kubeconfig(self, path: Path, token: str = "operator") -> Path:
        """A kubeconfig for this server; requests are recorded under the token."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "t"}}],
                    "current-context": "kmock",
                    "users": [{"name": "t", "user": {"token": token}}],
                }
            )
        )
        return path

    def verbs(self, who: str) -> set[tuple[str, str, str]]:
        """(api group, resource, RBAC verb) of every request made by `who` (a token)."""
        assert self._emulator is not None
        return set(self._emulator.verbs_by_who.get(who, set()))

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class Api:
    """A plain synchronous client, as kubectl would be."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()

    def _check(self, r: requests.Response) -> Any:
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.text[:500])
        return r.json() if r.content else None

    def get(self, path: str) -> dict[str, Any] | None:
        r = self.http.get(self.base + path, timeout=10)
        if r.status_code == 404:
            return None
        return self._check(r)  # type: ignore[no-any-return]

    def list(self, path: str) -> list[dict[str, Any]]:
        return list(
            (self._check(self.http.get(self.base + path, timeout=10)) or {}).get("items", [])
        )

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self.http.post(self.base + path, json=body, timeout=10))

    def patch(self, path: str, body: Any) -> Any:
        ctype = (
            "application/json-patch+json"
            if isinstance(body, list)
            else "application/merge-patch+json"
        )
        return self._check(
            self.http.patch(
                self.base + path,
                data=json.dumps(body),
                headers={"Content-Type": ctype},
                timeout=10,
            )
        )

    def delete(self, path: str) -> bool:
        r = self.http.delete(self.base + path, timeout=10)
        if r.status_code == 404:
            return False
        self._check(r)
        return True


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


# --- the nodes: StatefulSet controller, kubelet, garbage collector --------------------


@dataclass
class PodPorts:
    grpc: int = field(default_factory=free_port)
    module: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc}"


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    ports: PodPorts
    env: dict[str, str]
    volume: Path
    sidecar: subprocess.Popen[bytes] | None = None
    module: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: bool | None = None


def _ordinal(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


class Nodes:
    """Plays the StatefulSet controller, the kubelet and the garbage collector."""

    def __init__(self, api: Api, base_dir: Path) -> None:
        self.api = api
        self.base_dir = base_dir
        self.overrides_file = base_dir / "address-overrides.json"
        self.ports: dict[tuple[str, str], PodPorts] = {}  # (namespace, pod)
        self.running: dict[tuple[str, str], RunningPod] = {}
        self.deleted_pods: list[tuple[float, str, str]] = []  # (time, namespace, pod)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._channels: dict[str, grpc.Channel] = {}
        self._write_overrides()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="nodes", daemon=True)
        self._thread.start()

    # The address map, before the operator or any pod needs it.
    def register(self, namespace: str, cluster: str, ordinals: int = 6) -> None:
        with self._lock:
            for i in range(ordinals):
                self.ports.setdefault((namespace, f"{cluster}-{i}"), PodPorts())
            self._write_overrides()

    def _write_overrides(self) -> None:
        mapping = {}
        for (ns, pod), ports in self.ports.items():
            cluster = pod.rsplit("-", 1)[0]
            mapping[f"{pod}.{cluster}-peers.{ns}.svc:7000"] = ports.address
        tmp = self.overrides_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(mapping, indent=1))
        tmp.replace(self.overrides_file)

    def resolve(self, address: str) -> str:
        mapping = json.loads(self.overrides_file.read_text())
        if address not in mapping:
            raise KeyError(f"no loopback address for {address}")
        return str(mapping[address])

    def address(self, namespace: str, pod: str) -> str:
        return self.ports[(namespace, pod)].address

    def volume(self, namespace: str, claim: str) -> Path:
        return self.base_dir / "volumes" / namespace / claim

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        last_gc = 0.0
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._statefulsets()
                    self._kubelet()
                    if time.monotonic() - last_gc > 1.0:
                        self._garbage_collect()
                        last_gc = time.monotonic()
            except Exception:
                self.errors.append(traceback.format_exc())
                if len(self.errors) > 50:
                    del self.errors[:25]
            self._stop.wait(0.1)

    def _statefulsets(self) -> None:
        pods = self.api.list("/api/v1/pods")
        claims = {(c["metadata"]["namespace"], c["metadata"]["name"])
                  for c in self.api.list("/api/v1/persistentvolumeclaims")}  # fmt: skip
        for sts in self.api.list("/apis/apps/v1/statefulsets"):
            meta, spec = sts["metadata"], sts["spec"]
            ns, name = meta["namespace"], meta["name"]
            replicas = int(spec.get("replicas") or 0)
            mine = {
                p["metadata"]["name"]: p
                for p in pods
                if p["metadata"]["namespace"] == ns
                and any(
                    o.get("uid") == meta["uid"] for o in p["metadata"].get("ownerReferences", [])
                )
            }
            for ordinal in range(replicas):  # podManagementPolicy: Parallel
                pod_name = f"{name}-{ordinal}"
                if pod_name in mine:
                    continue
                running = self.running.get((ns, pod_name))
                if running is not None and self._alive(running):
                    continue  # the old pod's processes are still stopping
                for claim_t in spec.get("volumeClaimTemplates", []):
                    claim = f"{claim_t['metadata']['name']}-{pod_name}"
                    if (ns, claim) not in claims:
                        self.api.create(
                            f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
                            {
                                "apiVersion": "v1",
                                "kind": "PersistentVolumeClaim",
                                "metadata": {
                                    "name": claim,
                                    "namespace": ns,
                                    "labels": claim_t["metadata"].get("labels", {}),
                                },
                                "spec": claim_t["spec"],
                                "status": {"phase": "Bound"},
                            },
                        )
                template = copy.deepcopy(spec["template"])
                labels = {
                    **template.get("metadata", {}).get("labels", {}),
                    "statefulset.kubernetes.io/pod-name": pod_name,
                    "apps.kubernetes.io/pod-index": str(ordinal),
                    "controller-revision-hash": hashlib.sha256(
                        json.dumps(template, sort_keys=True).encode()
                    ).hexdigest()[:10],
                }
                pod_spec = template["spec"]
                pod_spec["hostname"] = pod_name
                pod_spec["subdomain"] = spec.get("serviceName", "")
                pod_spec["volumes"] = [
                    *pod_spec.get("volumes", []),
                    *(
                        {"name": c["metadata"]["name"],
                         "persistentVolumeClaim": {"claimName": f"{c['metadata']['name']}-{pod_name}"}}
                        for c in spec.get("volumeClaimTemplates", [])
                    ),
                ]  # fmt: skip
                self.api.create(
                    f"/api/v1/namespaces/{ns}/pods",
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": pod_name,
                            "namespace": ns,
                            "labels": labels,
                            "annotations": template.get("metadata", {}).get("annotations", {}),
                            "ownerReferences": [
                                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                 "uid": meta["uid"], "controller": True}
                            ],
                        },
                        "spec": pod_spec,
                        "status": {"phase": "Pending"},
                    },
                )  # fmt: skip
            for pod_name, pod in mine.items():
                if _ordinal(pod_name) >= replicas and not pod["metadata"].get("deletionTimestamp"):
                    self.api.delete(f"/api/v1/namespaces/{ns}/pods/{pod_name}")
            ready = sum(1 for p in mine.values() if _is_ready(p))
            status = {"replicas": len(mine), "readyReplicas": ready,
                      "observedGeneration": meta.get("generation", 1)}  # fmt: skip
            if sts.get("status") != {**sts.get("status", {}), **status}:
                try:
                    self.api.patch(f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/status",
                                   {"status": status})  # fmt: skip
                except ApiError as err:
                    if err.status != 404:  # deleted since it was listed: a controller shrugs
                        raise

    def _kubelet(self) -> None:
        pods = {
            (p["metadata"]["namespace"], p["metadata"]["name"]): p
            for p in self.api.list("/api/v1/pods")
        }
        # Pods that went away (or were replaced by a new pod of the same name).
        for key, run in list(self.running.items()):
            pod = pods.get(key)
            if pod is None or pod["metadata"]["uid"] != run.uid:
                self._stop_pod(run)
                del self.running[key]
                self.deleted_pods.append((time.monotonic(), key[0], key[1]))
        claims = {(c["metadata"]["namespace"], c["metadata"]["name"])
                  for c in self.api.list("/api/v1/persistentvolumeclaims")}  # fmt: skip
        for key, pod in pods.items():
            run = self.running.get(key)
            if run is None:
                run = self._admit(pod, claims)
                if run is None:
                    continue
                self.running[key] = run
            self._keep_running(run)
            self._report(pod, run)
        # Volumes whose claim is gone: the storage is released.
        root = self.base_dir / "volumes"
        if root.exists():
            for ns_dir in root.iterdir():
                for vol in ns_dir.iterdir():
                    in_use = any(r.volume == vol for r in self.running.values())
                    if (ns_dir.name, vol.name) not in claims and not in_use:
                        shutil.rmtree(vol, ignore_errors=True)

    def _admit(self, pod: dict[str, Any], claims: set[tuple[str, str]]) -> RunningPod | None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        ports = self.ports.get((ns, name))
        if ports is None:
            self.errors.append(f"pod {ns}/{name}: no loopback ports registered")
            return None
        containers = pod["spec"]["containers"]
        sidecar = next((c for c in containers if c["name"] == "tinyraft"), None)
        if sidecar is None:
            return None
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts = {}
        for m in sidecar.get("volumeMounts", []):
            claim = (volumes.get(m["name"]) or {}).get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                if (ns, claim) not in claims:
                    return None  # the claim is not there (yet)
                mounts[m["mountPath"]] = self.volume(ns, claim)
        env = self._env(pod, sidecar, ports, mounts)
        data = Path(env["RAFT_DATA_DIR"])
        volume = next(v for v in mounts.values() if data.is_relative_to(v))
        volume.mkdir(parents=True, exist_ok=True)
        return RunningPod(ns, name, meta["uid"], ports, env, volume)

    def _env(self, pod: dict[str, Any], sidecar: dict[str, Any], ports: PodPorts,
             mounts: dict[str, Path]) -> dict[str, str]:  # fmt: skip
        meta = pod["metadata"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"]}
        env: dict[str, str] = {}
        for e in sidecar.get("env", []):
            if "valueFrom" in e:
                env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                env[e["name"]] = re.sub(
                    r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)),
                    e.get("value", ""),
                )  # fmt: skip
        # What DNS and the pod network would do: every address becomes a loopback port.
        env["NODE_LISTEN_ADDR"] = ports.address
        env["NODE_ADVERTISE_ADDR"] = self.resolve(env["NODE_ADVERTISE_ADDR"])
        env["RAFT_JOIN"] = ",".join(
            self.resolve(a) for a in env.get("RAFT_JOIN", "").split(",") if a
        )
        env["MODULE_ADDR"] = f"127.0.0.1:{ports.module}"
        env["METRICS_ADDR"] = f"127.0.0.1:{ports.metrics}"
        for mount, host in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if env["RAFT_DATA_DIR"].startswith(mount):
                env["RAFT_DATA_DIR"] = str(host) + env["RAFT_DATA_DIR"][len(mount) :]
                break
        return env

    def _log(self, run: RunningPod, what: str) -> Path:
        path = self.base_dir / "logs" / run.namespace / f"{run.name}.{what}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn(self, run: RunningPod, what: str, args: list[str],
               env: dict[str, str]) -> subprocess.Popen[bytes]:  # fmt: skip
        with self._log(run, what).open("ab") as out:
            return subprocess.Popen(
                _dies_with_parent([sys.executable, "-m", "tinyraft.cli", *args]),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )

    def _keep_running(self, run: RunningPod) -> None:
        if run.module is None or run.module.poll() is not None:
            run.module = self._spawn(
                run, "module", ["example", "kv", "--listen", f"127.0.0.1:{run.ports.module}"], {}
            )
        if run.sidecar is None or run.sidecar.poll() is not None:
            if run.sidecar is not None:
                run.restarts += 1
            run.volume.mkdir(parents=True, exist_ok=True)
            run.sidecar = self._spawn(run, "sidecar", ["sidecar"], run.env)

    def _alive(self, run: RunningPod) -> bool:
        return any(p is not None and p.poll() is None for p in (run.sidecar, run.module))

    def _stop_pod(self, run: RunningPod) -> None:
        for proc in (run.sidecar, run.module):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (run.sidecar, run.module):
            if proc is not None:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def _healthy(self, run: RunningPod) -> bool:
        channel = self._channels.get(run.ports.address)
        if channel is None:
            channel = self._channels[run.ports.address] = grpc.insecure_channel(run.ports.address)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="tinyraft.ready"), timeout=0.5
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _report(self, pod: dict[str, Any], run: RunningPod) -> None:
        ready = self._healthy(run)
        if ready == run.ready and pod.get("status", {}).get("phase") == "Running":
            return
        run.ready = ready
        ns, name = run.namespace, run.name
        try:
            self._patch_pod_status(ns, name, pod, run, ready)
        except ApiError as err:
            if err.status != 404:  # deleted since it was listed: a kubelet shrugs too
                raise

    def _patch_pod_status(
        self, ns: str, name: str, pod: dict[str, Any], run: RunningPod, ready: bool
    ) -> None:
        self.api.patch(
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            {"status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [
                    {"name": c["name"], "ready": ready, "restartCount": run.restarts,
                     "image": c.get("image", ""), "imageID": "", "started": True}
                    for c in pod["spec"]["containers"]
                ],
            }},
        )  # fmt: skip

    def _garbage_collect(self) -> None:
        kinds = [
            "/apis/tinyraft.dev/v1alpha1/raftclusters",
            "/apis/apps/v1/statefulsets",
            "/api/v1/services",
            "/apis/policy/v1/poddisruptionbudgets",
            "/api/v1/pods",
        ]
        listed = {k: self.api.list(k) for k in kinds}
        uids = {o["metadata"]["uid"] for items in listed.values() for o in items}
        for k in kinds[1:]:
            for o in listed[k]:
                owners = o["metadata"].get("ownerReferences") or []
                if owners and not any(r.get("uid") in uids for r in owners):
                    ns, name = o["metadata"]["namespace"], o["metadata"]["name"]
                    base = k.rsplit("/", 1)
                    self.api.delete(f"{base[0]}/namespaces/{ns}/{base[1]}/{name}")

    # -- faults and inspection, for the tests -------------------------------------------

    def kill(self, namespace: str, pod: str) -> None:
        """SIGKILL the sidecar: the kubelet restarts the container, the data stays."""
        with self._lock:
            run = self.running[(namespace, pod)]
            if run.sidecar is not None and run.sidecar.poll() is None:
                run.sidecar.kill()
                run.sidecar.wait(10)

    def wipe(self, namespace: str, pod: str) -> None:
        """The pod comes back with an empty volume (its node and local disk were lost):
        both containers start from nothing."""
        with self._lock:
            run = self.running[(namespace, pod)]
            for proc in (run.sidecar, run.module):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            shutil.rmtree(run.volume, ignore_errors=True)
            run.volume.mkdir(parents=True)
            self._keep_running(run)

    def replace_volume(self, namespace: str, pod: str, source: Path) -> None:
        """Swap the pod's volume for another data dir (used to forge a foreign member)."""
        with self._lock:
            run = self.running[(namespace, pod)]
            for proc in (run.sidecar, run.module):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            shutil.rmtree(run.volume, ignore_errors=True)
            shutil.copytree(source, run.volume)
            self._keep_running(run)

    def purge(self, namespace: str) -> None:
        """Stop every pod of a namespace at once (the test is over)."""
        with self._lock:
            for key, run in list(self.running.items()):
                if key[0] == namespace:
                    for proc in (run.sidecar, run.module):
                        if proc is not None and proc.poll() is None:
                            proc.kill()
                            proc.wait(10)
                    del self.running[key]
            shutil.rmtree(self.base_dir / "volumes" / namespace, ignore_errors=True)

    def running_env(self, namespace: str, pod: str) -> dict[str, str]:
        with self._lock:
            return dict(self.running[(namespace, pod)].env)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for run in list(self.running.values()):
            for proc in (run.sidecar, run.module):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        for ch in self._channels.values():
            ch.close()


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


# --- the operator process --------------------------------------------------------------


class OperatorProcess:
    ARGV = ("python", "-m", "kopf", "run", "-m", "tinyraft_operator", "--all-namespaces",
            "--log-format=json")  # fmt: skip

    def __init__(self, server: ApiServer, nodes: Nodes, base_dir: Path,
                 name: str = "operator") -> None:  # fmt: skip
        self.server = server
        self.nodes = nodes
        self.base_dir = base_dir
        self.kubeconfig = server.write_kubeconfig(base_dir / f"{name}.kubeconfig")
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.log = base_dir / f"{name}.log"
        self.starts = 0

    def start(self, argv: tuple[str, ...] | list[str] = ARGV, **env: str) -> None:
        """Run `argv` (`python -m kopf run ...`, as an image and a Deployment would)
        against the emulator, with this interpreter; env adds to or overrides the test
        settings."""
        assert self.proc is None or self.proc.poll() is not None
        assert argv[0] == "python", argv
        self.metrics_port = free_port()
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== operator start #{self.starts} {argv} {env}\n".encode())
            self.proc = subprocess.Popen(
                _dies_with_parent([sys.executable, *argv[1:]]),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "KUBECONFIG": str(self.kubeconfig),
                    "TINYRAFT_OPERATOR_ADDRESS_OVERRIDES": f"@{self.nodes.overrides_file}",
                    "TINYRAFT_OPERATOR_INTERVAL": "0.5",
                    "TINYRAFT_OPERATOR_RPC_TIMEOUT": "10",
                    "TINYRAFT_OPERATOR_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
                    "TINYRAFT_SIDECAR_IMAGE": "tinyraft/tinyraft:test",
                    **env,
                },
                start_new_session=True,
            )  # fmt: skip

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


# --- a convenient bundle for a test ----------------------------------------------------


def admin_status(address: str, timeout: float = 1.0) -> apb.AdminStatusResponse | None:
    with grpc.insecure_channel(address) as ch:
        try:
            return admin_pb2_grpc.AdminStub(ch).Status(apb.AdminStatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None


@dataclass
class K8sEnv:
    server: ApiServer
    nodes: Nodes
    operator: OperatorProcess
    base_dir: Path
    namespaces: set[str] = field(default_factory=set)

    @property
    def api(self) -> Api:
        return self.server.api

    def create_cluster(self, namespace: str, name: str, replicas: int,
                       **spec: Any) -> dict[str, Any]:  # fmt: skip
        self.nodes.register(namespace, name)
        self.namespaces.add(namespace)
        body = {
            "apiVersion": "tinyraft.dev/v1alpha1",
            "kind": "RaftCluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "module": {"port": 7100},
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "example.org/kv-module:1",
                                "args": ["example", "kv", "--listen", "127.0.0.1:7100"],
                            }
                        ]
                    }
                },
                **spec,
            },
        }
        return self.api.create(f"{RC_API}/namespaces/{namespace}/raftclusters", body)  # type: ignore[no-any-return]

    def destroy(self, namespace: str) -> None:
        """Remove everything of a namespace, operator or not (between tests)."""
        api = self.api
        for rc in api.list(f"{RC_API}/namespaces/{namespace}/raftclusters"):
            url = f"{RC_API}/namespaces/{namespace}/raftclusters/{rc['metadata']['name']}"
            api.patch(url, {"metadata": {"finalizers": None}})
            api.delete(url)
        for kind in ("apis/apps/v1/statefulsets", "api/v1/pods",
                     "api/v1/persistentvolumeclaims", "api/v1/services",
                     "apis/policy/v1/poddisruptionbudgets"):  # fmt: skip
            group, plural = kind.rsplit("/", 1)
            for obj in api.list(f"/{group}/namespaces/{namespace}/{plural}"):
                api.delete(f"/{group}/namespaces/{namespace}/{plural}/{obj['metadata']['name']}")
        self.nodes.purge(namespace)
        self.server.purge(namespace)

    def rc(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.api.get(f"{RC_API}/namespaces/{namespace}/raftclusters/{name}")
        assert body is not None
        return body

    def patch_rc(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.api.patch(f"{RC_API}/namespaces/{namespace}/raftclusters/{name}", body)

    def events(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        items = [
            e for e in self.api.list(f"/api/v1/namespaces/{namespace}/events")
            if name is None or e.get("involvedObject", {}).get("name") == name
        ]  # fmt: skip
        return sorted(items, key=lambda e: int(e["metadata"].get("resourceVersion", 0)))

    def pods(self, namespace: str) -> dict[str, dict[str, Any]]:
        return {
            p["metadata"]["name"]: p for p in self.api.list(f"/api/v1/namespaces/{namespace}/pods")
        }

    def member_statuses(self, namespace: str, name: str) -> dict[str, apb.AdminStatusResponse]:
        out = {}
        for pod in self.pods(namespace):
            if pod.startswith(f"{name}-"):
                s = admin_status(self.nodes.address(namespace, pod))
                if s is not None:
                    out[pod] = s
        return out

    def leader(self, namespace: str, name: str) -> tuple[str, apb.AdminStatusResponse] | None:
        best = None
        for pod, s in self.member_statuses(namespace, name).items():
            if s.role == "leader" and (best is None or s.term > best[1].term):
                best = (pod, s)
        return best

    def addresses(self, namespace: str, name: str, ordinals: int = 6) -> list[str]:
        return [self.nodes.address(namespace, f"{name}-{i}") for i in range(ordinals)]

    def status_tells_the_truth(self, namespace: str, name: str, voters: int) -> bool:
        """status agrees with what the sidecars and pods say, and the cluster converged."""
        rc = self.rc(namespace, name)
        status = rc.get("status") or {}
        found = self.leader(namespace, name)
        if found is None:
            return False
        leader, ls = found
        config_voters = sorted(m.member_id for m in ls.members if m.suffrage == "voter")
        learners = [m.member_id for m in ls.members if m.suffrage == "learner"]
        want_voters = [f"{name}-{i}" for i in range(voters)]
        status_voters = sorted(m["name"] for m in status.get("members", [])
                               if m.get("suffrage") == "voter")  # fmt: skip
        pods = {p: b for p, b in self.pods(namespace).items() if p.startswith(f"{name}-")}
        ready = sum(1 for p in pods.values() if _is_ready(p))
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        ids = {s.cluster_id for s in self.member_statuses(namespace, name).values()}
        return bool(
            sorted(config_voters, key=_ordinal) == want_voters
            and not learners
            and sorted(status_voters, key=_ordinal) == want_voters
            and status.get("leader") == leader
            and status.get("term") == ls.term
            and status.get("phase") == "Running"
            and status.get("readyReplicas") == voters == ready == len(pods)
            and ids == {status.get("clusterID")}
            and status.get("observedGeneration") == rc["metadata"].get("generation")
            and conditions.get("Available") == "True"
            and conditions.get("Degraded") == "False"
            and conditions.get("Progressing") == "False"
            and all(m.get("healthy") for m in status.get("members", []))
        )


@contextlib.contextmanager
def k8s_env(base_dir: Path, install_crd: bool = True) -> Any:
    server = ApiServer(install_crd)
    nodes = Nodes(server.api, base_dir)
    operator = OperatorProcess(server, nodes, base_dir)
    try:
        yield K8sEnv(server, nodes, operator, base_dir)
    finally:
        operator.stop()
        nodes.close()
        server.close()

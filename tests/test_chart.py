"""The Helm chart (charts/tinyraft-operator) with real Helm (helm-sdkpy, in a subprocess:
tests/helm_run.py) installed into kmock's Kubernetes emulator, then used: the operator
runs from the Deployment Helm created, with exactly the RBAC the chart grants.

What the emulation cannot show: the API server does not enforce RBAC (the test compares
the operator's requests with the ClusterRole instead), runs no admission or
prometheus-operator, and schedules nothing (the fixture starts the processes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tinyraft
from k8s_fixture import CRD_PATH, K8sEnv, OperatorProcess, k8s_env, wait_for
from tinyraft import BlockingCaller
from tinyraft.local import free_port
from tinyraft_operator import builders
from tinyraft_operator import metrics as operator_metrics
from tinyraft_operator.spec import parse

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "tinyraft-operator"
RULES = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
DASHBOARD = json.loads((CHART / "files" / "dashboard.json").read_text())

CUSTOM = {
    "replicaCount": 2,
    "fullnameOverride": "tinyraft-operator",
    "image": {"repository": "registry.example/tinyraft-operator", "tag": "9.9.9",
              "pullPolicy": "Always"},
    "sidecarImage": {"repository": "registry.example/tinyraft", "tag": "9.9.9"},
    "operator": {"reconcileIntervalSeconds": 0.5, "rpcTimeoutSeconds": 10},
    "serviceAccount": {"name": "tinyraft-op", "annotations": {"team": "storage"}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "podMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
}  # fmt: skip

# bad values -> the words Helm's schema error must contain (the key at fault)
BAD_VALUES: list[tuple[dict[str, Any], list[str]]] = [
    ({"replicas": 3}, ["replicas"]),  # a typo of replicaCount
    ({"image": {"repository": "x", "tg": "1"}}, ["tg"]),
    ({"podMonitor": {"enabled": True, "intervl": "15s"}}, ["intervl"]),
    ({"podDisruptionBudget": {"enabled": True, "maxUnavailable": 0}}, ["maxUnavailable"]),
    ({"podDisruptionBudget": {"minAvailable": 1}}, ["minAvailable"]),
    ({"replicaCount": 0}, ["replicaCount"]),
    ({"metrics": {"port": 80}}, ["port"]),
    ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, ["pullPolicy"]),
    ({"serviceMonitor": {"interval": "30 seconds"}}, ["interval"]),
]


def helm(kubeconfig: Path, namespace: str, installs: list[dict[str, Any]]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helm_run.py")],
        input=json.dumps({"chart": str(CHART), "kubeconfig": str(kubeconfig),
                          "namespace": namespace, "installs": installs}),
        env={**os.environ, "HELM_DRIVER": "memory"},
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def objects(manifest: str) -> dict[tuple[str, str], dict[str, Any]]:
    """{(kind, name): object} of a rendered release manifest."""
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


class Installed:
    def __init__(self, env: K8sEnv) -> None:
        kubeconfig = env.server.write_kubeconfig(env.base_dir / "helm.kubeconfig", "helm")
        default = helm(kubeconfig, "default", [{"release": "tr", "values": {}}])
        custom = helm(kubeconfig, "ops", [{"release": "custom", "values": CUSTOM}])
        bad = helm(
            kubeconfig,
            "default",
            [{"release": f"bad{i}", "values": v} for i, (v, _) in enumerate(BAD_VALUES)],
        )
        for result in (default, custom):
            assert "manifest" in result["installs"][0], result["installs"][0]
        self.lint = default["lint"]
        self.default = objects(default["installs"][0]["manifest"])
        self.default_notes = default["installs"][0]["notes"]
        self.custom = objects(custom["installs"][0]["manifest"])
        self.bad = [i.get("error", "") for i in bad["installs"]]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sEnv]:
    # the emulator starts without the CRD: Helm installs it from the chart's crds/
    with k8s_env(tmp_path_factory.mktemp("chart"), install_crd=False) as e:
        yield e


@pytest.fixture(scope="module")
def installed(env: K8sEnv) -> Installed:
    return Installed(env)


def test_the_chart_lints_and_matches_the_package(installed: Installed) -> None:
    assert installed.lint["Errors"] is None, installed.lint
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == tinyraft.__version__


def test_the_crd_is_the_one_the_operator_is_tested_with(env: K8sEnv, installed: Installed) -> None:
    assert CRD_PATH == CHART / "crds" / "raftcluster.yaml"  # one file, used by both
    served = env.api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                         "raftclusters.tinyraft.dev")  # fmt: skip
    assert served is not None, "Helm did not install the CRD from crds/"
    assert served["spec"] == yaml.safe_load(CRD_PATH.read_text())["spec"]


def test_the_default_install(env: K8sEnv, installed: Installed) -> None:
    assert set(installed.default) == {
        ("ServiceAccount", "tr-tinyraft-operator"),
        ("ClusterRole", "tr-tinyraft-operator"),
        ("ClusterRoleBinding", "tr-tinyraft-operator"),
        ("Service", "tr-tinyraft-operator-metrics"),
        ("Deployment", "tr-tinyraft-operator"),
    }
    deployment = env.api.get("/apis/apps/v1/namespaces/default/deployments/tr-tinyraft-operator")
    assert deployment is not None, "not created in the emulator"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 1
    assert container["image"] == f"tinyraft/operator:{tinyraft.__version__}"
    env_vars = {e["name"]: e["value"] for e in container["env"]}
    assert env_vars["TINYRAFT_SIDECAR_IMAGE"] == f"tinyraft/tinyraft:{tinyraft.__version__}"
    assert "TINYRAFT_OPERATOR_PEERING" not in env_vars  # one replica: standalone
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == builders.NON_ROOT_UID  # the images' user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "tr-tinyraft-operator"
    rules = installed.default[("ClusterRole", "tr-tinyraft-operator")]["rules"]
    assert not any("kopf.dev" in r["apiGroups"] for r in rules)  # no peering, no grant
    assert "kubectl apply -f" in installed.default_notes  # tells the next command


def test_non_default_values(env: K8sEnv, installed: Installed) -> None:
    objs = installed.custom
    deployment = objs[("Deployment", "tinyraft-operator")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env_vars = {e["name"]: e["value"] for e in container["env"]}
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "registry.example/tinyraft-operator:9.9.9"
    assert env_vars["TINYRAFT_SIDECAR_IMAGE"] == "registry.example/tinyraft:9.9.9"
    assert env_vars["TINYRAFT_OPERATOR_PEERING"] == "tinyraft-operator"
    assert ("ClusterKopfPeering", "tinyraft-operator") in objs
    assert objs[("ServiceAccount", "tinyraft-op")]["metadata"]["annotations"] == {"team": "storage"}
    assert objs[("PodDisruptionBudget", "tinyraft-operator")]["spec"]["maxUnavailable"] == 1
    assert objs[("ServiceMonitor", "tinyraft-operator")]["metadata"]["labels"]["release"] == (
        "prometheus"
    )
    members = objs[("PodMonitor", "tinyraft-operator-members")]["spec"]
    assert members["namespaceSelector"] == {"any": True}
    assert members["podMetricsEndpoints"][0]["port"] == "metrics"
    # it selects the pods the operator builds, and turns their cluster label into the
    # `raftcluster` label the alerts and the dashboard group by
    example = yaml.safe_load((ROOT / "examples" / "kubernetes" / "kv-raftcluster.yaml").read_text())
    pod_labels = builders.labels(parse(example))
    assert members["selector"]["matchLabels"].items() <= pod_labels.items()
    relabel = members["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel["sourceLabels"] == [
        "__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", builders.CLUSTER_LABEL)
    ]
    assert relabel["targetLabel"] == "raftcluster"
    rule = objs[("PrometheusRule", "tinyraft-operator")]
    assert rule["spec"] == RULES
    dashboard = objs[("ConfigMap", "tinyraft-operator-dashboard")]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["tinyraft.json"]) == DASHBOARD
    for obj in objs.values():  # Helm really created them in the emulator
        assert env.api.get(_path(obj)) is not None, _path(obj)


def _path(obj: dict[str, Any]) -> str:
    """The API path of a rendered object (namespaced ones name their namespace)."""
    group_version, kind = obj["apiVersion"], obj["kind"]
    plural = kind.lower() + ("es" if kind.endswith("s") else "s")
    prefix = "/api/" if "/" not in group_version else "/apis/"
    ns = obj["metadata"].get("namespace")
    return f"{prefix}{group_version}{f'/namespaces/{ns}' if ns else ''}/{plural}/{obj['metadata']['name']}"


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_every_rendered_object_is_valid_kubernetes(installed: Installed, version: str) -> None:
    checked = 0
    for obj in {**installed.default, **installed.custom}.values():
        if obj["apiVersion"].split("/")[0] in ("monitoring.coreos.com", "kopf.dev"):
            continue  # custom resources: no published schema (checked by the tests above)
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("case", range(len(BAD_VALUES)))
def test_the_schema_rejects_bad_values_naming_the_key(installed: Installed, case: int) -> None:
    values, words = BAD_VALUES[case]
    error = installed.bad[case]
    assert error, f"Helm accepted {values}"
    assert "schema" in error, error
    for word in words:
        assert word in error, error


def _selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """The tinyraft series an expression selects: (metric name, {label: value})."""
    out = []
    for m in re.finditer(r"\b(tinyraft_[a-z_]+)\b(\{[^}]*\})?", expr):
        labels = dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', m.group(2) or ""))
        out.append((m.group(1), labels))
    return out


def _exported(text: str) -> dict[str, set[str]]:
    """{sample name: label names} a /metrics page exports, labelled families without
    children included (by their type's sample names)."""
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""], "summary": ["_sum", "_count"], "info": ["_info"]}  # fmt: skip
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, [""]):
            out.setdefault(family.name + suffix, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_alerts_and_dashboard_use_metrics_the_sidecar_and_operator_export(
    make_cluster: Any,
) -> None:
    cluster = make_cluster(3)
    with BlockingCaller(cluster.addresses(), timeout=10.0) as caller:  # some traffic
        caller.apply(json.dumps({"op": "put", "key": "a", "value": "1"}).encode())
    exported: dict[str, set[str]] = {}
    for member in cluster.members.values():
        page = requests.get(f"http://127.0.0.1:{member.metrics_port}/metrics", timeout=5).text
        for name, labels in _exported(page).items():
            exported.setdefault(name, set()).update(labels)
    for name, labels in _exported(generate_latest(operator_metrics.REGISTRY).decode()).items():
        exported.setdefault(name, set()).update(labels)
    # PodMonitor/Prometheus add these to every series
    added = {"namespace", "pod", "raftcluster", "job", "instance", "le"}
    exprs = [r["expr"] for g in RULES["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    assert len(exprs) > 20
    for expr in exprs:
        for name, labels in _selectors(expr):
            assert name in exported, f"{name} (in {expr!r}) is not exported"
            unknown = set(labels) - exported[name] - added
            assert not unknown, f"{name} has no label {unknown} (in {expr!r})"
    for group in RULES["groups"]:  # every alert names the cluster and has a summary
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert "raftcluster" in rule["annotations"]["summary"]


def _reconciles(metrics_page: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_page)
        if family.name == "tinyraft_operator_reconciles"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def _granted(cluster_role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in cluster_role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_operator_runs_from_the_chart_with_exactly_the_rbac_it_grants(
    env: K8sEnv, installed: Installed
) -> None:
    """Two replicas from the rendered Deployment (kopf peering: one acts), a cluster
    created, written, scaled down and deleted; every request the operator made is
    granted by the chart's ClusterRole, and every grant was used."""
    deployment = installed.custom[("Deployment", "tinyraft-operator")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    rendered_env = {e["name"]: e["value"] for e in container["env"]}
    del rendered_env["TINYRAFT_OPERATOR_METRICS_ADDR"]  # both replicas share loopback
    replicas = []
    for n in range(deployment["spec"]["replicas"]):
        liveness = free_port()
        # what the pod runs: the operator image's entry point, the chart's args
        argv = [*_operator_entrypoint(), *container["args"]]
        argv = [re.sub(r"0\.0\.0\.0:8080/", f"127.0.0.1:{liveness}/", arg) for arg in argv]
        assert any(f":{liveness}/healthz" in arg for arg in argv), argv
        replica = OperatorProcess(env.server, env.nodes, env.base_dir, name=f"replica{n}")
        replica.start(argv, **rendered_env)
        replicas.append((replica, liveness))
    try:
        for _replica, liveness in replicas:  # the chart's liveness probe answers
            url = f"http://127.0.0.1:{liveness}/healthz"
            wait_for(lambda u=url: requests.get(u, timeout=2).ok, 30, "liveness endpoint")
        peering = "/apis/kopf.dev/v1/clusterkopfpeerings/tinyraft-operator"

        def both_peering() -> dict[str, Any]:
            status = (env.api.get(peering) or {}).get("status") or {}
            return status if len(status) == 2 else {}

        peers = wait_for(both_peering, 30, "both replicas peering")
        assert len({p["priority"] for p in peers.values()}) == 2, "ties pause every replica"

        ns = "apps"
        env.create_cluster(ns, "kv", 3)
        wait_for(lambda: env.status_tells_the_truth(ns, "kv", 3), 120, "3 members converged")
        # (by now both replicas have long seen each other's peering entry; from here on
        # exactly one of them may act)
        before = [_reconciles(replica.metrics()) for replica, _ in replicas]
        with BlockingCaller(env.addresses(ns, "kv", 3), timeout=10.0) as caller:
            assert caller.apply(json.dumps({"op": "put", "key": "k", "value": "v"}).encode())
        # someone edits what the operator owns: it puts it back
        service, pdb = (
            f"/api/v1/namespaces/{ns}/services/kv",
            f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/kv",
        )
        env.api.patch(service, {"spec": {"selector": {"tinyraft.dev/cluster": "other"}}})
        env.api.patch(pdb, {"spec": {"maxUnavailable": 2}})
        wait_for(lambda: env.api.get(pdb)["spec"]["maxUnavailable"] == 1  # type: ignore[index]
                 and env.api.get(service)["spec"]["selector"] == {"tinyraft.dev/cluster": "kv"},  # type: ignore[index]
                 30, "the Service and PDB restored")  # fmt: skip
        # a template change rolls the members (the operator deletes pods: OnDelete)
        template = env.rc(ns, "kv")["spec"]["template"]
        template.setdefault("metadata", {})["annotations"] = {"rev": "2"}
        env.patch_rc(ns, "kv", {"spec": {"template": template}})
        wait_for(lambda: sorted(p["metadata"].get("annotations", {}).get("rev", "")
                                for p in env.pods(ns).values()) == ["2", "2", "2"]
                 and env.status_tells_the_truth(ns, "kv", 3), 120, "rolled")  # fmt: skip
        env.patch_rc(ns, "kv", {"spec": {"replicas": 1}})
        wait_for(lambda: env.status_tells_the_truth(ns, "kv", 1), 120, "scaled down to 1")
        env.api.delete(f"/apis/tinyraft.dev/v1alpha1/namespaces/{ns}/raftclusters/kv")
        wait_for(lambda: not env.api.list(f"/apis/apps/v1/namespaces/{ns}/statefulsets")
                 and not env.api.get(f"/apis/tinyraft.dev/v1alpha1/namespaces/{ns}/raftclusters/kv"),
                 60, "the cluster deleted")  # fmt: skip
        acted = [_reconciles(r.metrics()) - b for (r, _), b in zip(replicas, before, strict=True)]
        assert sorted(n > 0 for n in acted) == [False, True], (
            f"exactly one replica acts, the other stands by: reconciles {acted}"
        )
    finally:
        for replica, _ in replicas:
            replica.stop()
        env.destroy("apps")

    used = env.server.verbs("operator")
    granted = _granted(installed.custom[("ClusterRole", "tinyraft-operator")])
    assert used - granted == set(), (
        f"the operator called what the chart does not grant: {used - granted}"
    )
    # not exercised here: a RaftCluster with spec.tls (Secret), and owner references with
    # blockOwnerDeletion (an admission plugin the emulator does not run checks it)
    unused = {("", "secrets", "get"), ("tinyraft.dev", "raftclusters/finalizers", "update")}
    assert granted - used == unused, f"granted, never used: {granted - used - unused}"


def test_an_operator_without_its_peering_object_refuses_to_start(env: K8sEnv) -> None:
    """kopf alone would pause for ever, silently, waiting for the object."""
    operator = OperatorProcess(env.server, env.nodes, env.base_dir, name="nopeering")
    operator.start(TINYRAFT_OPERATOR_PEERING="nosuch")
    try:
        assert operator.wait_exit(60) != 0
    finally:
        operator.stop()
    log = operator.log.read_text()
    assert "TINYRAFT_OPERATOR_PEERING=nosuch: no ClusterKopfPeering" in log, log[-2000:]


def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    promtool = shutil.which("promtool", path=str(Path(sys.executable).parent)) or shutil.which(
        "promtool"
    )
    assert promtool, "promtool is missing: ./dev setup installs it into .venv/bin"
    for args in (
        ["check", "rules", str(CHART / "files" / "prometheus-rules.yaml")],
        ["test", "rules", "alert_rules_test.yaml"],  # every alert, firing and silent
    ):
        proc = subprocess.run(
            [promtool, *args], cwd=ROOT / "tests", capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _operator_entrypoint() -> list[str]:
    """The ENTRYPOINT of images/operator.Dockerfile (exec form)."""
    text = (ROOT / "images" / "operator.Dockerfile").read_text()
    line = next(x for x in text.splitlines() if x.startswith("ENTRYPOINT "))
    return json.loads(line.removeprefix("ENTRYPOINT "))  # type: ignore[no-any-return]

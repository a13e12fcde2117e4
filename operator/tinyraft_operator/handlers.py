"""kopf wiring: `kopf run -m tinyraft_operator --all-namespaces`.

Create, update and resume handlers and a periodic timer all run the same reconcile
(one step per cluster per round). Deletion runs behind kopf's finalizer and never
talks to the sidecars, so it cannot hang on a broken cluster."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any, cast

import kopf

from tinyraft_operator import builders, metrics
from tinyraft_operator import settings as settings_mod
from tinyraft_operator.kube import Kube, KubeError, path
from tinyraft_operator.reconcile import Runtime, reconcile
from tinyraft_operator.settings import GROUP, PLURAL, VERSION

log = logging.getLogger("tinyraft_operator")

SETTINGS = settings_mod.load()
FINALIZER = "tinyraft.dev/finalizer"
MAX_ROUNDS = 4
_runtime: Runtime | None = None


def _emit(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    # kopf reads only apiVersion, kind and metadata: a raw dict is enough.
    kopf.event(cast(kopf.Body, dict(body)), type=type_, reason=reason, message=message)


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(SETTINGS, Kube(), _emit)
    return _runtime


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # kopf turns its own log lines into Events from this level on: only problems.
    # (The operator's events -- membership changes, refusals -- are posted explicitly.)
    settings.posting.level = logging.WARNING
    if SETTINGS.peering:
        # Several replicas: kopf pauses every replica that sees a live peer of a higher
        # priority, and pauses *all* of them on a tie; a random priority per process
        # makes exactly one active (ties are a 1-in-2^31 chance). Without its
        # ClusterKopfPeering object kopf would pause for ever, silently:
        # peering_exists() below refuses to start instead.
        settings.peering.name = SETTINGS.peering
        settings.peering.standalone = False
        settings.peering.mandatory = True
        settings.peering.priority = random.randint(1, 2**31 - 1)
    else:
        settings.peering.standalone = True
    settings.watching.server_timeout = 300
    metrics.serve(SETTINGS.metrics_addr)
    log.info(
        "tinyraft operator starting: sidecar image %s, reconcile every %ss, metrics on %s",
        SETTINGS.sidecar_image,
        SETTINGS.interval_s,
        SETTINGS.metrics_addr or "(off)",
    )


@kopf.on.startup()
async def peering_exists(**_: Any) -> None:
    if not SETTINGS.peering:
        return
    url = f"/apis/kopf.dev/v1/clusterkopfpeerings/{SETTINGS.peering}"
    try:
        found = await runtime().kube.get(url)
    except KubeError as err:
        found, why = None, f" ({err})"
    else:
        why = ""
    if found is None:
        raise kopf.PermanentError(
            f"TINYRAFT_OPERATOR_PEERING={SETTINGS.peering}: no ClusterKopfPeering of that "
            f"name{why}; create it (the Helm chart does when replicaCount > 1) or unset "
            "the variable to run a single standalone operator"
        )


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    if _runtime is not None:
        await _runtime.close()
        await _runtime.kube.close()


async def _run(namespace: str | None, name: str | None) -> None:
    if not namespace or not name:
        return
    # After a step was taken, look again at once (a fresh observation, then at most
    # one more step) instead of waiting for the timer; a few rounds at most.
    for _ in range(MAX_ROUNDS):
        try:
            result = await reconcile(runtime(), namespace, name)
        except Exception as err:  # never let kopf back off for minutes: the timer retries
            log.warning("cluster=%s/%s result=error error=%r", namespace, name, err)
            result = "error"
        metrics.RECONCILES.labels(result).inc()
        if result != "acted":
            break


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def changed(namespace: str | None, name: str | None, **_: Any) -> None:
    await _run(namespace, name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.interval_s)
async def periodic(namespace: str | None, name: str | None, **_: Any) -> None:
    await _run(namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def deleted(namespace: str | None, name: str | None, logger: kopf.Logger,
                  **_: Any) -> None:  # fmt: skip
    """Delete what the operator created (owner references let Kubernetes' garbage
    collector do it too). The data volumes stay, as a StatefulSet's do: deleting a
    cluster never destroys data by itself; delete the claims to free them."""
    if not namespace or not name:
        return
    kube = runtime().kube
    for kind, obj in (
        ("statefulsets", name),
        ("pdbs", name),
        ("services", name),
        ("services", f"{name}-peers"),
    ):
        try:
            await kube.delete(path(kind, namespace, obj))
        except KubeError as err:  # never block the deletion on cleanup
            logger.warning("could not delete %s %s: %s", kind, obj, err)
    runtime().clusters.pop(f"{namespace}/{name}", None)
    logger.info("cluster %s/%s deleted; volumes %s-%s-* kept", namespace, name,
                builders.DATA_VOLUME, name)  # fmt: skip

"""Real Helm (the helm-sdkpy library), one process per call: the library reads
HELM_DRIVER only from the environment the process started with, so tests run this
script with HELM_DRIVER=memory (no release Secrets in the emulator).

stdin: {"chart": path, "kubeconfig": path, "namespace": ns,
        "installs": [{"release": name, "values": {...}}, ...]}  (installs may be empty)
stdout: {"lint": {...}, "installs": [{"manifest": str, "notes": str} | {"error": str}]}"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import helm_sdkpy as helm


async def main(request: dict[str, Any]) -> dict[str, Any]:
    assert os.environ.get("HELM_DRIVER") == "memory", "run with HELM_DRIVER=memory"
    config = helm.Configuration(namespace=request["namespace"], kubeconfig=request["kubeconfig"])
    out: dict[str, Any] = {"lint": await helm.Lint(config).run(request["chart"]), "installs": []}
    for install in request.get("installs", []):
        try:
            release = await helm.Install(config).run(
                install["release"], request["chart"], values=install["values"],
                wait=False, timeout=60,
            )  # fmt: skip
        except helm.HelmError as exc:
            out["installs"].append({"error": str(exc)})
        else:
            out["installs"].append(
                {"manifest": release["manifest"], "notes": release["info"].get("notes", "")}
            )
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))

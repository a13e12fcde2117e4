"""A small async Kubernetes REST client: objects stay plain dicts (what the builders
make), patches are JSON merge patches (or JSON patches for whole-field replacement)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import kubernetes

from tinyraft_operator.settings import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _configuration() -> Any:
    """The official client's view of the credentials: in-cluster service account, else
    KUBECONFIG / ~/.kube/config."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


def path(kind: str, namespace: str, name: str = "", subresource: str = "") -> str:
    base = {
        "pods": "/api/v1/namespaces/{ns}/pods",
        "services": "/api/v1/namespaces/{ns}/services",
        "pvcs": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
        "secrets": "/api/v1/namespaces/{ns}/secrets",
        "statefulsets": "/apis/apps/v1/namespaces/{ns}/statefulsets",
        "pdbs": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
        "raftclusters": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
    }[kind].format(ns=namespace)
    return "/".join(p for p in (base, name, subresource) if p)


class Kube:
    """Requests go out with aiohttp (kopf's own HTTP client); the official client only
    reads the credentials (and refreshes a service account token as it rotates)."""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else _configuration()
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        c = self.config
        if not c.host.startswith("https"):
            return False
        context = ssl.create_default_context(cafile=c.ssl_ca_cert or None)
        if not c.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if c.cert_file:
            context.load_cert_chain(c.cert_file, c.key_file)
        return context

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, url: str, body: Any = None, query: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        auth = self.config.auth_settings().get("BearerToken")
        if auth and auth.get("value"):
            headers["Authorization"] = auth["value"]
        elif self.config.username:
            headers["Authorization"] = self.config.get_basic_auth_token()
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            if method == "PATCH":
                headers["Content-Type"] = JSON_PATCH if isinstance(body, list) else MERGE_PATCH
            data = json.dumps(body)
        session = await self.session()
        async with session.request(
            method, self.config.host.rstrip("/") + url, params=query, data=data, headers=headers
        ) as response:
            text = await response.text()
            if response.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise KubeError(response.status, str(message)[:500])
            return json.loads(text) if text else None

    async def get(self, url: str) -> dict[str, Any] | None:
        try:
            return await self.call("GET", url)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, url: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
        items = (await self.call("GET", url, query=query) or {}).get("items") or []
        # Filter here too: not every API server (or emulator) honours labelSelector.
        return [
            o
            for o in items
            if all((o.get("metadata", {}).get("labels") or {}).get(k) == v
                   for k, v in selector.items())
        ]  # fmt: skip

    async def create(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call("POST", url, dict(body))

    async def patch(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call("PATCH", url, dict(body))

    async def replace_at(self, url: str, pointer: str, value: Any) -> dict[str, Any]:
        """Replace one field whole (a merge patch would keep keys the new value lacks)."""
        body = [{"op": "replace", "path": pointer, "value": value}]
        return await self.call("PATCH", url, body)

    async def delete(self, url: str) -> bool:
        """True if it was deleted now, False if it was not there."""
        try:
            await self.call("DELETE", url, {"propagationPolicy": "Background"})
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

"""The Docker Engine API over its socket, for the look at the host before every preview and up.

The day-2 commands use the docker CLI (:mod:`infra.core.dockercli`). The checks before a
deployment run inside every `pulumi preview` and `pulumi up`, where each CLI start costs ~40 ms
and the API answers the same questions in ~3 ms. A remote host is reached through the socket
that :func:`infra.core.dockerhost.session` forwards. Plain Python, no Pulumi.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any, Mapping, Optional
from urllib.parse import quote, urlsplit

from infra.core.errors import OperationFailed

# Debian's Engine 20.10 speaks 1.41; newer engines accept it.
API_VERSION = "v1.41"
DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 15.0


class EngineError(OperationFailed):
    """The engine refused a request or could not be reached; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        self.status = status
        super().__init__(message)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("docker", timeout=TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(self._path)


class Engine:
    """One Docker Engine, by its address (``unix:///path`` or ``tcp://host:port`` without TLS)."""

    def __init__(self, address: str):
        self.address = address
        parts = urlsplit(address)
        if parts.scheme not in ("unix", "tcp"):
            raise ValueError(f"unsupported Docker address {address}")
        self._parts = parts

    @classmethod
    def of(cls, docker_env: Mapping[str, str]) -> Optional["Engine"]:
        """The engine a docker CLI with ``docker_env`` (over this process's environment) talks to;
        None where it needs what this client does not speak (TLS, a context)."""
        env = {**os.environ, **docker_env}
        address = env.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
        if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CONTEXT") or not address.startswith(("unix://", "tcp://")):
            return None
        return cls(address)

    def _connection(self) -> http.client.HTTPConnection:
        if self._parts.scheme == "unix":
            return _UnixConnection(self._parts.path)
        return http.client.HTTPConnection(self._parts.hostname, self._parts.port or 2375, timeout=TIMEOUT_S)

    def request(self, method: str, path: str, body: Optional[dict] = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None)."""
        connection = self._connection()
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(method, f"/{API_VERSION}{path}", body=data,
                               headers={"Content-Type": "application/json"} if data is not None else {})
            response = connection.getresponse()
            raw = response.read()
        except OSError as exc:
            raise EngineError(f"the Docker Engine at {self.address} does not answer: {exc}") from None
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        """GET ``path``; raises :class:`EngineError` unless the engine answers 200."""
        status, body = self.request("GET", path)
        if status != 200:
            raise EngineError(f"GET {path} on {self.address}: {message(body)}", status)
        return body

    def containers(self) -> list[dict]:
        return self.get("/containers/json?all=1")

    def networks(self) -> list[dict]:
        return self.get("/networks")

    def volumes(self) -> list[dict]:
        return self.get("/volumes").get("Volumes") or []

    def has_image(self, name: str) -> bool:
        status, _ = self.request("GET", f"/images/{quote(name, safe='/:@')}/json")
        return status == 200


def message(body: Any) -> str:
    """The engine's own words in an error answer."""
    return body.get("message", str(body)) if isinstance(body, dict) else str(body)

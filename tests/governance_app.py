"""The whole app, as `serve` composes it, over scripted deployments, with keys made by the keyring the CLI
uses: for the governance tests (roles, scopes, limits, the OpenAI SDK with a key)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nlweb_local.governance.identity import Limits, Role
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings


class RecordingProvider(ScriptedProvider):
    """A scripted deployment that keeps the context of every request it serves."""

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.contexts: list[Any] = []

    async def stream(self, request):
        self.contexts.append(request.context)
        async for ch in super().stream(request):
            yield ch


@dataclass
class GovernedService:
    settings: Any
    comp: Any
    app: Any
    local: RecordingProvider
    cloud: RecordingProvider
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, name: str, role: str = "user", **kw: Any) -> str:
        """Make a key (as `nlweb-local keys create` does) and remember it by name."""
        limits = kw.pop("limits", Limits())
        _, secret = self.comp.governance.keyring.create(name, Role.parse(role), limits=limits, **kw)
        self.comp.governance.authenticator.keys_changed()
        self.keys[name] = secret
        return secret

    def headers(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}


def governed_service(tmp_path, *, telemetry: bool = False, cloud_price: tuple[float, float] = (2.5, 10.0),
                     auth: dict[str, Any] | None = None) -> GovernedService:
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "price_in_per_m": cloud_price[0],
                                           "price_out_per_m": cloud_price[1]})
    settings.llm.breaker.min_calls = 1000
    settings.cache.enabled = False
    for k, v in (auth or {}).items():
        setattr(settings.auth, k, v)
    local = RecordingProvider("local", "local says hello")
    cloud = RecordingProvider("cloud", "cloud says hello", local=False)
    extra = {} if telemetry else {"telemetry": None}
    comp = scripted_service(settings, {"local": local, "cloud": cloud}, **extra)
    return GovernedService(settings, comp, create_app(settings, comp, close_components=False), local, cloud)


def client(service: GovernedService, **kw: Any):
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url="http://127.0.0.1", **kw)

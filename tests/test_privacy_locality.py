"""Locality from where a deployment runs (declared location, address, llm.local_hosts), never its engine type;
and air_gap: cloud deployments are not built, outbound connections are refused, /health says so."""
from __future__ import annotations

import asyncio
import socket

import pytest
from starlette.testclient import TestClient

from nlweb_local.config.settings import DeploymentSettings
from nlweb_local.governance.air_gap import AirGapRefused, OutboundGuard, allowed_endpoints
from nlweb_local.governance.locality import Locality
from nlweb_local.providers.testing import ScriptedProvider
from nlweb_local.server.app import create_app
from stand_ins import scripted_service, service_settings


def d(**kw):
    return DeploymentSettings(**{"name": "x", "engine": "vllm", "model": "m", **kw})


def no_lookup(name):
    raise AssertionError(f"{name} must not be looked up")


@pytest.mark.parametrize("kw, local", [
    ({"engine": "llama_cpp"}, True),
    ({"url": "http://127.0.0.1:8000/v1"}, True),
    ({"url": "http://localhost:8000/v1"}, True),
    ({"url": "http://10.0.0.5:8000/v1"}, True),
    ({"url": "http://[fd00::5]:8000/v1"}, True),
    ({"url": "http://93.184.216.34:8000/v1"}, False),  # a vllm at a public address is cloud
    ({"url": "http://169.254.169.254/v1"}, False),  # the metadata address is a cloud's service
    ({"engine": "openai"}, False),  # api.openai.com, never looked up
    ({"engine": "anthropic"}, False),
    ({"engine": "ollama"}, True),  # its default 127.0.0.1:11434
    ({"engine": "openai", "url": "http://127.0.0.1:8080/v1"}, True),  # an OpenAI-compatible server here
    ({"url": "http://127.0.0.1:8080/v1", "location": "cloud"}, False),  # a local proxy to a cloud API
    ({"url": "http://93.184.216.34/v1", "location": "local"}, True),
    ({"instances": ["http://10.0.0.1/v1", "http://93.184.216.34/v1"]}, False),  # every instance must be local
    ({"instances": ["http://10.0.0.1/v1", "http://10.0.0.2/v1"]}, True),
    ({"engine": "some_plugin"}, False),  # no url and no known default
    ({"url": "https://gpu.example/v1"}, False),  # reserved names are never looked up
])
def test_placement(kw, local):
    assert Locality(resolve=no_lookup).of(d(**kw)).local is local


def test_local_hosts_and_resolved_names():
    resolved = {"gpu-box": ["10.1.2.3"], "mixed": ["10.1.2.3", "93.184.216.34"], "partner": ["198.51.100.7"]}
    loc = Locality(["partner", "203.0.113.0/24"], resolve=lambda n: resolved.get(n, []))
    assert loc.of(d(url="http://gpu-box:8000/v1")).local
    assert not loc.of(d(url="http://mixed:8000/v1")).local
    assert loc.of(d(url="http://partner:8000/v1")).local
    assert loc.of(d(url="http://203.0.113.9/v1")).local
    assert not loc.of(d(url="http://nowhere:8000/v1")).local  # does not resolve: cloud
    assert "did not resolve" in loc.of(d(url="http://nowhere:8000/v1")).why


def test_the_router_and_v1_models_see_the_address_not_the_engine(tmp_path):
    settings = service_settings(tmp_path, {"name": "far", "engine": "vllm", "model": "m",
                                           "url": "http://93.184.216.34:8000/v1"})
    comp = scripted_service(settings, {"local": ScriptedProvider("local"), "far": ScriptedProvider("far")},
                            telemetry=None, audit=None)
    try:
        assert {v.name: v.info.local for v in comp.router.deployments()} == {"local": True, "far": False}
        with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
            owned = {m["id"]: m["owned_by"] for m in c.get("/v1/models").json()["data"]}
            assert owned["far"] == "cloud" and owned["local"] == "local"
            assert c.get("/health").json()["air_gap"] is False
    finally:
        asyncio.run(comp.close())


def test_air_gap_builds_no_cloud_deployment_and_health_says_so(tmp_path, caplog):
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4o-mini"},
                                {"name": "gpu", "engine": "vllm", "model": "m", "url": "http://10.0.0.5:8000/v1"},
                                groups={"smart": ["cloud"], "any": ["cloud", "gpu"]}, search_deployment="cloud")
    settings.air_gap = True
    built = []

    class Counting(ScriptedProvider):
        def __init__(self, name, **kw):
            super().__init__(name, **kw)
            built.append(name)

    providers = {"local": Counting("local"), "gpu": Counting("gpu"), "cloud": Counting("cloud", local=False)}
    comp = scripted_service(settings, providers, telemetry=None, audit=None)
    try:
        assert comp.router.names() == ["local", "gpu"]
        assert comp.router.aliases() == {"any": ("gpu",)}
        assert "air_gap: deployment 'cloud' is not built" in caplog.text
        with TestClient(create_app(settings, comp, close_components=False), base_url="http://localhost") as c:
            assert c.get("/health").json()["air_gap"] is True
            assert "cloud" not in {m["id"] for m in c.get("/v1/models").json()["data"]}
    finally:
        asyncio.run(comp.close())


def test_air_gap_with_only_cloud_deployments_refuses_to_start(tmp_path):
    from nlweb_local.core.errors import BadRequestError

    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4o-mini"},
                                embedded_enabled=False)
    settings.air_gap = True
    with pytest.raises(BadRequestError, match="air_gap"):
        scripted_service(settings, {"cloud": ScriptedProvider("cloud", local=False)}, telemetry=None, audit=None)


def test_the_guard_allows_only_loopback_and_the_configured_local_hosts(tmp_path):
    settings = service_settings(tmp_path, {"name": "cloud", "engine": "openai", "model": "gpt-4o-mini"},
                                {"name": "gpu", "engine": "vllm", "model": "m", "url": "http://10.0.0.5:8000/v1"})
    settings.cache_store.redis_url = "redis://10.0.0.9:6379/0"
    settings.auth.jwt.issuer, settings.auth.jwt.audience = "https://idp.example/", "nlweb"
    settings.auth.jwt.jwks_url = "https://idp.example/jwks.json"
    hosts = allowed_endpoints(settings, Locality(resolve=no_lookup))
    assert hosts == {"10.0.0.5", "10.0.0.9"}  # not the cloud API, not the JWKS on a public name
    guard = OutboundGuard(hosts)
    guard.check(socket.AF_INET, ("10.0.0.5", 8000))
    guard.check(socket.AF_INET, ("127.0.0.1", 6379))
    guard.check(socket.AF_INET6, ("::1", 6379, 0, 0))
    with pytest.raises(AirGapRefused):
        guard.check(socket.AF_INET, ("10.0.0.6", 8000))


def test_the_process_refuses_a_connection_the_air_gap_does_not_allow():
    """Installed, the guard stops real connection attempts — plain sockets, name lookups, asyncio and aiohttp —
    before they leave, while loopback keeps working."""
    import aiohttp

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    with OutboundGuard({"10.0.0.5"}) as guard:
        with pytest.raises(AirGapRefused, match="192.0.2.1:80"):
            socket.create_connection(("192.0.2.1", 80), timeout=1)
        with pytest.raises(AirGapRefused, match="api.openai.com:443"):
            socket.getaddrinfo("api.openai.com", 443)
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # loopback: allowed

        async def fetch():
            async with aiohttp.ClientSession() as s:
                async with s.get("http://192.0.2.1:8080/v1/models", timeout=aiohttp.ClientTimeout(total=2)):
                    pass

        with pytest.raises(aiohttp.ClientConnectorError) as e:
            asyncio.run(fetch())
        assert isinstance(e.value.os_error, AirGapRefused)
        assert "192.0.2.1:80" in guard.refused and "192.0.2.1:8080" in guard.refused
        try:
            import uvloop  # uvicorn's loop when installed: it connects in libuv, not through socket
        except ImportError:
            uvloop = None
        if uvloop is not None:
            loop = uvloop.new_event_loop()
            try:
                with pytest.raises(aiohttp.ClientConnectorError):
                    loop.run_until_complete(fetch())
            finally:
                loop.close()
            assert guard.refused.count("192.0.2.1:8080") == 2
    server.close()


def test_serve_installs_the_guard_only_with_air_gap(tmp_path):
    from nlweb_local.cli.serve import air_gap

    settings = service_settings(tmp_path, {"name": "gpu", "engine": "vllm", "model": "m", "url": "http://10.0.0.5:8000/v1"})
    assert air_gap(settings) is None
    settings.air_gap = True
    guard = air_gap(settings)
    try:
        assert guard.hosts == {"10.0.0.5"}
        with pytest.raises(AirGapRefused):
            socket.create_connection(("192.0.2.7", 443), timeout=1)
    finally:
        guard.uninstall()

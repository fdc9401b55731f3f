"""Every route of the app against the route table (governance/routes.py): a route the table does not list
fails here, so a new endpoint cannot be forgotten; without credentials every protected route answers 401,
a role below the route's 403, and the route's own role gets through. Public routes are listed explicitly."""
import re

import pytest
from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from governance_app import client, governed_service
from nlweb_local.governance.identity import Role
from nlweb_local.governance.routes import RouteTable

PUBLIC_EXPECTED = {"/health", "/ready", "/", "/static", "/dashboard"}  # (the dashboard page holds no data)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = governed_service(tmp_path_factory.mktemp("routes"), telemetry=True)  # telemetry on: /metrics & co. exist
    for role in ("user", "operator", "admin"):
        svc.key(role, role)
    yield svc


def _routes(app):
    """(template, concrete path, method) for every route and method of the app."""
    out = []
    for r in app.routes:
        if isinstance(r, Mount):
            out.append((r.path, r.path + "/app.js", "GET"))
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", r.path)
        if isinstance(r, WebSocketRoute):
            out.append((r.path, concrete, "WEBSOCKET"))
            continue
        for m in sorted((r.methods or {"GET"}) - {"HEAD"}):
            out.append((r.path, concrete, m))
    return out


def _app_routes():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        svc = governed_service(Path(d), telemetry=True)
        routes = _routes(svc.app)
        svc.comp.telemetry.close()
        return routes


ROUTES = _app_routes()
TABLE = RouteTable()


def test_the_app_has_the_routes_this_test_expects():
    paths = {t for t, _, _ in ROUTES}
    assert {"/v1/chat/completions", "/ask", "/mcp", "/admin/keys", "/admin/breakers", "/metrics"} <= paths


@pytest.mark.parametrize("template", sorted({t for t, _, _ in ROUTES}))
def test_every_route_is_in_the_route_table(template):
    assert TABLE.listed(template), f"{template} is not in governance/routes.py ROUTES: give it its least role"


def test_the_public_routes_are_exactly_these():
    public = {t for t, _, _ in ROUTES if TABLE.rule(re.sub(r"\{[^}]+\}", "x", t)).role is Role.PUBLIC}
    assert public == PUBLIC_EXPECTED


@pytest.mark.parametrize("template,path,method", ROUTES, ids=[f"{m} {p}" for _, p, m in ROUTES])
async def test_each_route_needs_its_role(service, template, path, method):
    need = TABLE.rule(path).role
    if method == "WEBSOCKET":
        _check_websocket(service, path, need)
        return
    async with client(service) as c:
        anonymous = await c.request(method, path)
        if need is Role.PUBLIC:
            assert anonymous.status_code not in (401, 403)
            return
        assert anonymous.status_code == 401, anonymous.text
        assert "missing credentials" in anonymous.text
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        for role in (Role.USER, Role.OPERATOR, Role.ADMIN):
            r = await c.request(method, path, headers=service.headers(role.label))
            if role < need:
                assert r.status_code == 403, (role, r.text)
                assert f"needs the {need.label} role" in r.text
            else:
                assert r.status_code not in (401, 403), (role, r.status_code, r.text)


def _check_websocket(service, path, need):
    """A WebSocket without credentials, or below its route's role, is closed before it is accepted."""
    assert need is not Role.PUBLIC
    tc = TestClient(service.app, base_url="http://localhost")
    for headers, allowed in [({}, False), *[(service.headers(r.label), r >= need)
                                           for r in (Role.USER, Role.OPERATOR, Role.ADMIN)]]:
        if allowed:
            with tc.websocket_connect(path, headers=headers) as ws:
                ws.send_json({"type": "ping"})
                assert ws.receive_json() is not None
        else:
            with pytest.raises(WebSocketDisconnect) as refused:
                with tc.websocket_connect(path, headers=headers):
                    pass
            assert refused.value.code == 1008


async def test_an_unlisted_path_needs_admin(service):
    async with client(service) as c:
        assert (await c.get("/nowhere")).status_code == 401
        assert (await c.get("/nowhere", headers=service.headers("operator"))).status_code == 403
        assert (await c.get("/nowhere", headers=service.headers("admin"))).status_code == 404

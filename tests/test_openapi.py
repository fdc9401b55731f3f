"""GET /openapi.json: every route of the app is in it with its methods (so a new route cannot be missing),
the /v1 request bodies are the pydantic models' schemas, /ask documents its parameters, security follows the
route table; the document is a valid OpenAPI 3.1 document (schemathesis loads it)."""
import re

from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient

from governance_app import governed_service


def _service(tmp_path):
    svc = governed_service(tmp_path, telemetry=True)
    svc.key("u", "user")
    return svc


def test_every_route_of_the_app_is_documented(tmp_path):
    svc = _service(tmp_path)
    with TestClient(svc.app, base_url="http://localhost") as c:
        assert c.get("/openapi.json").status_code == 401  # a user's document, like the API it describes
        r = c.get("/openapi.json", headers=svc.headers("u"))
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    for route in svc.app.routes:
        assert route.path in doc["paths"], f"{route.path} is missing from /openapi.json"
        if isinstance(route, (Mount, WebSocketRoute)):
            continue
        for m in (route.methods or {"GET"}) - {"HEAD"}:
            assert m.lower() in doc["paths"][route.path], f"{m} {route.path} is missing"
        for name in re.findall(r"\{([^}]+)\}", route.path):
            for op in doc["paths"][route.path].values():
                assert any(p["in"] == "path" and p["name"] == name for p in op["parameters"])
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "messages" in schema["required"] and "temperature" in schema["properties"]
    ask = {p["name"]: p for p in doc["paths"]["/ask"]["get"]["parameters"]}
    assert ask["query"]["required"] and ask["generate_mode"]["schema"]["enum"] == ["list", "summarize", "generate"]
    assert "security" not in doc["paths"]["/health"]["get"]
    assert doc["paths"]["/admin/keys"]["post"]["x-nlweb-role"] == "admin" and doc["paths"]["/admin/keys"]["post"]["security"]
    svc.comp.telemetry.close()


def test_the_document_is_valid_openapi(tmp_path):
    schemathesis = __import__("pytest").importorskip("schemathesis")
    from nlweb_local.server.openapi import openapi_document

    svc = _service(tmp_path)
    doc = openapi_document(svc.app.routes, version="test")
    schema = schemathesis.openapi.from_dict(doc)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == sum(len(v) for v in doc["paths"].values())
    svc.comp.telemetry.close()

"""API keys end to end: the CLI prints a key once and stores only its hash; a key works as a Bearer token
and as x-api-key (the OpenAI SDK included); missing, malformed, unknown, revoked and expired keys get 401s
that say which, in each endpoint's wire format; scopes (models, sites) give 403; the identity reaches the
request's CallContext and the ASGI scope; `serve` refuses a non-loopback host without auth."""
import asyncio
import sqlite3

import pytest

from governance_app import client, governed_service
from nlweb_local.cli.main import main
from nlweb_local.core.errors import AuthError
from nlweb_local.governance import build_governance
from nlweb_local.governance.identity import Role
from nlweb_local.governance.keys import well_formed
from stand_ins import service_settings

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture()
def service(tmp_path):
    return governed_service(tmp_path)


def test_cli_prints_the_key_once_as_the_last_word_and_stores_only_its_hash(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--name", "ci", "--role", "user", "--team", "search", "--models", "local",
                 "--sites", "recipes", "--expires", "30d", "--tokens-per-day", "1000"]) == 0
    out = capsys.readouterr()
    key = out.out.strip().splitlines()[-1]
    assert out.out.strip() == key and well_formed(key)
    assert "shown once" in out.err
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("keys.sqlite*"))
    assert key.encode() not in raw and key.split("_", 2)[2].encode() not in raw  # (the secret may hold "_")
    (row,) = sqlite3.connect(tmp_path / "keys.sqlite").execute("SELECT hash, team, models, limits FROM api_keys")
    assert len(row[0]) == 64 and row[1] == "search" and "local" in row[2] and "1000" in row[3]
    assert oct((tmp_path / "auth.secret").stat().st_mode & 0o777) == "0o600"

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and "active" in listing and key not in listing
    key_id = key.split("_")[1]
    assert main(["keys", "rotate", key_id]) == 0
    rotated = capsys.readouterr().out.strip().splitlines()[-1]
    assert well_formed(rotated) and rotated != key and rotated.split("_")[1] == key_id
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "000000000000"]) == 1  # unknown id: an error, not a crash


async def test_bearer_and_x_api_key_both_work_and_the_identity_reaches_the_call_context(service):
    key = service.key("alice", "user", team="research")
    async with client(service) as c:
        r1 = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
        r2 = await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": key})
    assert r1.status_code == r2.status_code == 200
    ctx = service.local.contexts[-1]
    key_id = key.split("_")[1]
    assert (ctx.caller, ctx.team, ctx.role) == (key_id, "research", "user")


async def test_the_identity_is_on_the_asgi_scope(service):
    from nlweb_local.server.auth import AuthMiddleware

    seen = {}

    async def app(scope, receive, send):
        seen["identity"] = scope["state"]["identity"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    key = service.key("bob", "operator")
    import httpx

    mw = AuthMiddleware(app, governance=service.comp.governance)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://127.0.0.1") as c:
        assert (await c.get("/ask", headers={"x-api-key": key})).status_code == 204
    ident = seen["identity"]
    assert (ident.name, ident.role, ident.key_id, ident.subject) == ("bob", Role.OPERATOR, key.split("_")[1], "bob")


@pytest.mark.parametrize("headers,says", [
    ({}, "missing credentials"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, "malformed Authorization header"),
    ({"authorization": "Bearer not-a-key"}, "malformed API key"),
    ({"x-api-key": "nlk_0123456789ab_" + "A" * 43}, "unknown API key"),
])
async def test_bad_credentials_get_401_saying_which(service, headers, says):
    service.key("someone", "user")
    async with client(service) as c:
        v1 = await c.post("/v1/chat/completions", json=CHAT, headers=headers)
        ask = await c.get("/ask", params={"query": "x"}, headers=headers)
        mcp = await c.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    assert v1.status_code == ask.status_code == mcp.status_code == 401
    assert says in v1.json()["error"]["message"] and v1.json()["error"]["type"] == "authentication_error"
    assert says in ask.json()["error"] and ask.json()["status"] == 401  # NLWeb's error shape
    assert says in mcp.json()["error"]["message"] and mcp.json()["jsonrpc"] == "2.0"


async def test_revoked_and_expired_keys_get_401_saying_so(service):
    gov = service.comp.governance
    key = service.key("leaver", "user")
    async with client(service) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT, headers=service.headers("leaver"))).status_code == 200
        # revoked over HTTP: the cached key stops working at once
        admin = service.key("root", "admin")
        r = await c.post(f"/admin/keys/{key.split('_')[1]}/revoke", headers={"x-api-key": admin})
        assert r.status_code == 200 and r.json()["status"] == "revoked"
        r = await c.post("/v1/chat/completions", json=CHAT, headers=service.headers("leaver"))
        assert r.status_code == 401 and "was revoked" in r.json()["error"]["message"]
    record, expired = gov.keyring.create("temp", Role.USER, expires_in_s=1e-6)
    await asyncio.sleep(0.01)
    with pytest.raises(AuthError, match="expired"):
        await gov.authenticator.authenticate(expired)


async def test_a_revoke_by_another_process_takes_effect_within_the_cache_ttl(tmp_path):
    settings = service_settings(tmp_path)
    now = [0.0]
    gov = build_governance(settings)
    gov.authenticator._monotonic = lambda: now[0]  # the cache's clock
    _, key = gov.keyring.create("k", Role.USER)
    gov.authenticator.keys_changed()
    await gov.authenticator.authenticate(key)
    other = build_governance(settings)  # the CLI, in another process
    other.keyring.revoke(key.split("_")[1])
    await gov.authenticator.authenticate(key)  # still cached
    now[0] += settings.auth.key_cache_ttl_s
    with pytest.raises(AuthError, match="revoked"):
        await gov.authenticator.authenticate(key)


async def test_a_header_seen_recently_is_still_held_to_expiry_revocation_and_its_own_header_name(service):
    """The middleware's first look (a credential header's raw value seen recently: one lookup) never outlives
    what it stands for: a key that expires is refused from its expiry on, a key revoked by another process
    from the end of the cache TTL on, and a value seen as `Authorization` is not taken as `x-api-key`."""
    gov = service.comp.governance
    auth = gov.authenticator
    _, key = gov.keyring.create("short", Role.USER, expires_in_s=0.6)
    auth.keys_changed()
    async with client(service) as c:
        bearer = {"authorization": f"Bearer {key}"}
        assert (await c.post("/v1/chat/completions", json=CHAT, headers=bearer)).status_code == 200
        assert auth.seen(f"Bearer {key}".encode()) is not None  # remembered under its raw value
        # x-api-key carrying what was seen as Authorization: not taken from the Authorization cache
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": f"Bearer {key}"})
        assert r.status_code == 401 and "malformed API key" in r.json()["error"]["message"]
        await asyncio.sleep(0.7)  # expired within the cache TTL (10 s): refused from its expiry on
        r = await c.post("/v1/chat/completions", json=CHAT, headers=bearer)
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    # revoked by another process: the raw value is believed until the cache TTL ends, not after
    now = [1000.0]
    auth._monotonic = lambda: now[0]
    _, other_key = gov.keyring.create("other", Role.USER)
    auth.keys_changed()
    async with client(service) as c:
        h = {"x-api-key": other_key}
        assert (await c.post("/v1/chat/completions", json=CHAT, headers=h)).status_code == 200
        build_governance(service.settings).keyring.revoke(other_key.split("_")[1])
        assert (await c.post("/v1/chat/completions", json=CHAT, headers=h)).status_code == 200  # within the TTL
        now[0] += service.settings.auth.key_cache_ttl_s
        r = await c.post("/v1/chat/completions", json=CHAT, headers=h)
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


async def test_a_cached_key_is_not_hashed_again_and_a_near_miss_is_still_refused(tmp_path):
    settings = service_settings(tmp_path)
    gov = build_governance(settings)
    _, key = gov.keyring.create("k", Role.USER)
    gov.authenticator.keys_changed()
    ident = await gov.authenticator.authenticate(key)
    hashed = []
    real = gov.authenticator._hash
    gov.authenticator._hash = lambda k: hashed.append(k) or real(k)
    assert await gov.authenticator.authenticate(key) is ident  # the hot path: no HMAC
    assert hashed == []
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")  # the same key id, one character of its secret changed
    with pytest.raises(AuthError, match="unknown API key"):
        await gov.authenticator.authenticate(forged)
    assert hashed == [forged]  # a key not seen before is hashed and looked up


async def test_rotation_over_http_retires_the_old_secret(service):
    admin = service.key("root", "admin")
    old = service.key("svc", "user")
    async with client(service, headers={"x-api-key": admin}) as c:
        r = await c.post(f"/admin/keys/{old.split('_')[1]}/rotate")
        new = r.json()["secret"]
        assert r.status_code == 200 and new != old
        assert (await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": old})).status_code == 401
        assert (await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": new})).status_code == 200


async def test_admin_endpoints_create_and_list_keys(service):
    admin = service.key("root", "admin")
    async with client(service, headers={"x-api-key": admin}) as c:
        r = await c.post("/admin/keys", json={"name": "web", "role": "user", "sites": ["recipes"],
                                              "limits": {"requests_per_minute": 5}, "expires": "7d"})
        assert r.status_code == 201, r.text
        made = r.json()
        assert well_formed(made["secret"]) and made["limits"] == {"requests_per_minute": 5}
        listing = (await c.get("/admin/keys")).json()["keys"]
        assert {k["name"] for k in listing} == {"root", "web"}
        assert all("secret" not in k and "hash" not in k for k in listing)
        bad = await c.post("/admin/keys", json={"name": "x", "role": "superuser"})
        assert bad.status_code == 400 and "admin, operator or user" in bad.json()["error"]["message"]
        bad = await c.post("/admin/keys", json={"name": "x", "role": "user", "expires": "soon"})
        assert bad.status_code == 400 and "30d" in bad.json()["error"]["message"]


async def test_the_first_key_over_http_only_from_this_machine(service):
    import httpx

    transport = httpx.ASGITransport(app=service.app, client=("10.1.2.3", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        r = await c.post("/admin/keys", json={"name": "x", "role": "admin"})
    assert r.status_code == 403 and "server's machine" in r.json()["error"]["message"]
    async with client(service) as c:  # from 127.0.0.1: the bootstrap path, and auth turns on
        r = await c.post("/admin/keys", json={"name": "first", "role": "admin"})
        assert r.status_code == 201
        assert (await c.get("/admin/keys")).status_code == 401


async def test_auth_is_off_until_a_key_exists_and_on_when_enabled(tmp_path):
    svc = governed_service(tmp_path / "a")
    async with client(svc) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
    svc = governed_service(tmp_path / "b", auth={"enabled": True})
    async with client(svc) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 401


async def test_model_scope(service):
    service.key("local-only", "user", models=["local"])
    async with client(service, headers=service.headers("local-only")) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "model": "cloud"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert "may use the models local" in r.json()["error"]["message"]
        from nlweb_local.core.errors import ProviderConnectionError

        # auto would fail over to the cloud: not for this key
        service.local.fail_with = ProviderConnectionError("refused", deployment="local")
        cloud_before = service.cloud.calls
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code >= 500 and service.cloud.calls == cloud_before
        service.local.fail_with = None
        assert (await c.post("/v1/chat/completions", json={**CHAT, "model": "local"})).status_code == 200


async def test_a_key_whose_models_are_all_gone_is_refused_not_unrestricted(service):
    service.key("stale", "user", models=["retired-model"])
    async with client(service, headers=service.headers("stale")) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 403 and "none of them is served here" in r.json()["error"]["message"]
    assert service.local.calls == service.cloud.calls == 0


async def test_site_scope(service):
    service.key("recipes-only", "user", sites=["recipes"])
    async with client(service, headers=service.headers("recipes-only")) as c:
        r = await c.get("/ask", params={"query": "soup", "site": "hiking"})
        assert r.status_code == 403 and "may search the sites recipes" in r.json()["error"]


def test_serve_refuses_a_non_loopback_host_without_auth(tmp_path, monkeypatch, capsys):
    from nlweb_local.cli.serve import is_loopback, refuse_open_exposure

    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path))
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without authentication" in err and "--insecure" in err
    settings = service_settings(tmp_path)
    settings.server.host = "0.0.0.0"
    refuse_open_exposure(settings, insecure=True)  # the operator's choice: a warning, no refusal
    settings.auth.enabled = True
    refuse_open_exposure(settings, insecure=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_the_openai_sdk_with_a_key(tmp_path):
    openai = pytest.importorskip("openai")
    from conftest import LiveServer

    svc = governed_service(tmp_path)
    key = svc.key("sdk", "user")
    srv = LiveServer(svc.app)
    try:
        ok = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0)
        r = ok.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "local says hello"
        assert [m.id for m in ok.models.list()][0] == "auto"
        chunks = list(ok.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "local says hello"
        bad = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="nlk_0123456789ab_" + "A" * 43, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    finally:
        srv.stop()


def test_the_hot_path_hash_is_hmac_sha256():
    import os

    from nlweb_local.governance.keys import KeyHasher, key_hash, new_key

    for secret in (os.urandom(16), os.urandom(32), os.urandom(64), os.urandom(100)):
        hasher = KeyHasher(secret)
        for key in (new_key()[1], "nlk_x", ""):
            assert hasher(key) == key_hash(secret, key)


async def test_a_key_may_be_held_to_networks_and_a_trusted_proxy_s_forwarded_for_is_believed(tmp_path):
    import httpx

    svc = governed_service(tmp_path, auth={"trusted_proxies": ["127.0.0.1/32"]})
    key = svc.key("office", "user", allow_from=["10.0.0.0/8"])

    def from_(address):
        transport = httpx.ASGITransport(app=svc.app, client=(address, 5000))
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers={"x-api-key": key})

    async with from_("10.1.2.3") as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
    async with from_("192.0.2.9") as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 403
        assert "may be used only from 10.0.0.0/8; this request came from 192.0.2.9" in r.json()["error"]["message"]
        # an untrusted client cannot claim another address
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-forwarded-for": "10.9.9.9"})
        assert r.status_code == 403
    async with from_("127.0.0.1") as c:  # the trusted proxy: the nearest untrusted hop is the client
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-forwarded-for": "192.0.2.1, 10.9.9.9"})
        assert r.status_code == 200
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-forwarded-for": "10.9.9.9, 192.0.2.1"})
        assert r.status_code == 403 and "came from 192.0.2.1" in r.json()["error"]["message"]


def test_allow_from_must_be_networks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NLWEB_LOCAL_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--name", "x", "--role", "user", "--allow-from", "the-office"]) == 2
    assert "not an IP network" in capsys.readouterr().err
    assert main(["keys", "create", "--name", "x", "--role", "user", "--allow-from", "10.1.2.3", "2001:db8::/32"]) == 0
    assert main(["keys", "list"]) == 0
    assert "from=10.1.2.3/32,2001:db8::/32" in capsys.readouterr().out


@pytest.mark.parametrize("headers, expected", [
    ([(b"authorization", b"Bearer nlk_a")], "nlk_a"),
    ([(b"x-api-key", b" nlk_b ")], "nlk_b"),
    ([(b"authorization", b"bearer  nlk_c ")], "nlk_c"),  # (any case of the scheme, blanks around the key)
    ([(b"x-api-key", b"nlk_x"), (b"authorization", b"Bearer nlk_a")], "nlk_a"),  # Authorization first
    ([(b"authorization", b"Bearer nlk_1"), (b"authorization", b"Bearer nlk_2")], "nlk_1"),  # of two, the first
    (((b"host", b"h"), (b"x-api-key", b"nlk_t")), "nlk_t"),  # a tuple of headers
    (iter([(b"x-api-key", b"nlk_i")]), "nlk_i"),  # any iterable
    ([(b"host", b"h")], None),
])
def test_the_key_a_request_carries(headers, expected):
    from nlweb_local.server.auth import credential

    assert credential(headers) == expected


@pytest.mark.parametrize("value", [b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer   ", b"nlk_abc"])
def test_an_authorization_header_that_is_not_bearer_is_refused(value):
    from nlweb_local.core.errors import AuthError
    from nlweb_local.server.auth import credential

    with pytest.raises(AuthError, match="malformed Authorization header"):
        credential([(b"authorization", value)])

"""SSO: OIDC/JWT bearer tokens signed by the test's own keys (PyJWT), checked against a JWKS file and a
JWKS URL served on loopback: issuer, audience, expiry, signature and key id checks; claims mapped to a role
and a team; a JWKS that cannot be fetched refuses token users with 503 while API keys keep working."""
import http.server
import json
import threading
import time

import pytest

jwt = pytest.importorskip("jwt")
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from governance_app import client, governed_service  # noqa: E402

ISSUER, AUDIENCE = "https://idp.test", "nlweb-local"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


def _keypair(kid: str):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture(scope="module")
def keys():
    return {"k1": _keypair("k1"), "k2": _keypair("k2"), "rogue": _keypair("k1")}


def token(keys, *, kid="k1", signer=None, **claims):
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@example.com", "iat": now, "exp": now + 600,
            "role": "user", **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, keys[signer or kid][0], algorithm="RS256", headers={"kid": kid})


def sso_service(tmp_path, keys, *, teams=None, **jwt_settings):
    tmp_path.mkdir(parents=True, exist_ok=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [keys["k1"][1]]}))
    settings = {"jwks_file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE,
                "role_map": {"nlweb-admins": "admin"}, **jwt_settings}
    return governed_service(tmp_path, auth={"jwt": settings, **({"teams": teams} if teams else {})})


async def test_a_valid_token_maps_its_claims_to_an_identity(tmp_path, keys):
    svc = sso_service(tmp_path, keys)
    async with client(svc) as c:
        r = await c.post("/v1/chat/completions", json=CHAT,
                         headers={"authorization": f"Bearer {token(keys, team='research')}"})
        assert r.status_code == 200, r.text
        ctx = svc.local.contexts[-1]
        assert (ctx.caller, ctx.team, ctx.role) == ("sub:alice@example.com", "research", "user")
        user = {"authorization": f"Bearer {token(keys)}"}
        assert (await c.get("/admin/keys", headers=user)).status_code == 403
        admin = {"authorization": f"Bearer {token(keys, role=['staff', 'nlweb-admins'])}"}
        assert (await c.get("/admin/keys", headers=admin)).status_code == 200
        assert (await c.get("/admin/keys")).status_code == 401  # SSO configured: auth is on


@pytest.mark.parametrize("claims,says", [
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"aud": "another-service"}, "not meant for this service"),
    ({"iss": "https://evil.test"}, "another identity provider"),
    ({"signer": "rogue"}, "signature does not verify"),
    ({"kid": "k9", "signer": "k2"}, "key id 'k9' is not in the JWKS"),
    ({"sub": None}, "lacks the claim 'sub'"),
])
async def test_bad_tokens_get_401_saying_why(tmp_path, keys, claims, says):
    svc = sso_service(tmp_path, keys)
    kw = {k: claims.pop(k) for k in ("signer", "kid") if k in claims}
    bad = token(keys, **kw, **claims)
    async with client(svc) as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {bad}"})
    assert r.status_code == 401 and says in r.json()["error"]["message"]


async def test_a_token_without_a_known_role_is_403_unless_a_default_is_set(tmp_path, keys):
    svc = sso_service(tmp_path / "a", keys)
    async with client(svc) as c:
        r = await c.post("/v1/chat/completions", json=CHAT,
                         headers={"authorization": f"Bearer {token(keys, role='guest')}"})
    assert r.status_code == 403 and "auth.jwt.role_map" in r.json()["error"]["message"]
    svc = sso_service(tmp_path / "b", keys, default_role="user")
    async with client(svc) as c:
        r = await c.post("/v1/chat/completions", json=CHAT,
                         headers={"authorization": f"Bearer {token(keys, role='guest')}"})
    assert r.status_code == 200


def test_sso_settings_refuse_what_would_be_unsafe(tmp_path):
    from nlweb_local.config.settings import JwtSettings

    with pytest.raises(ValueError, match="issuer and audience"):
        JwtSettings(jwks_file="x.json", issuer=ISSUER)
    with pytest.raises(ValueError, match="HS256"):
        JwtSettings(jwks_file="x.json", issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"])


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b"{}"
    status = 200
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):
        pass


async def test_a_jwks_url_is_fetched_cached_and_its_outage_refuses_only_token_users(tmp_path, keys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Jwks.body = json.dumps({"keys": [keys["k1"][1], keys["k2"][1]]}).encode()
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        svc = governed_service(tmp_path, auth={"jwt": {"jwks_url": url, "issuer": ISSUER, "audience": AUDIENCE,
                                                       "jwks_cache_s": 0.001}})
        api_key = svc.key("robot", "user")
        async with client(svc) as c:
            ok = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token(keys)}"})
            assert ok.status_code == 200, ok.text
            assert _Jwks.hits == 1
            _Jwks.status, _Jwks.body = 500, b"down"
            await __import__("asyncio").sleep(0.01)  # the cached set is stale now
            fresh = token(keys, kid="k2", sub="bob")
            r = await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {fresh}"})
            assert r.status_code == 503 and "JWKS cannot be fetched" in r.json()["error"]["message"]
            assert int(r.headers["retry-after"]) >= 1
            r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": api_key})
            assert r.status_code == 200  # keys keep working
    finally:
        server.shutdown()


async def test_a_privacy_claim_keeps_the_token_users_calls_local_and_the_strictest_class_wins(tmp_path, keys):
    """`privacy_map` maps the token's `privacy` claim to a class; with the local engine down, a local_only token
    user's call is refused rather than sent to the cloud, whatever its own header says, while a plain token
    user's same call goes to the cloud; a team's local_only (from the token's team claim) holds too."""
    from nlweb_local.core.errors import ProviderConnectionError

    svc = sso_service(tmp_path, keys, privacy_map={"confidential": "local_only"},
                      teams={"vault": {"privacy": "local_only"}})
    svc.local.fail_with = ProviderConnectionError("local engine down", deployment="local")
    async with client(svc) as c:
        async def ask(tok, **headers):
            return await c.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {tok}", **headers})

        r = await ask(token(keys, privacy="confidential"), **{"x-nlweb-privacy": "any"})
        assert r.status_code == 503, r.text
        r = await ask(token(keys, privacy=["public", "local_only"]))  # a list: the strictest mapped value
        assert r.status_code == 503, r.text
        r = await ask(token(keys, team="vault"))  # the token's team is local_only
        assert r.status_code == 503, r.text
        assert svc.cloud.contexts == []  # none of them reached the cloud deployment
        r = await ask(token(keys, privacy="public"))  # a value the map does not know: no class
        assert r.status_code == 200 and r.headers["x-nlweb-route"].startswith("cloud"), r.text
        r = await ask(token(keys), **{"x-nlweb-privacy": "local_only"})  # the header alone is enough too
        assert r.status_code == 503
        svc.local.fail_with = None
        r = await ask(token(keys, privacy="confidential"))
        assert r.status_code == 200 and r.headers["x-nlweb-route"].startswith("local")
        assert svc.local.contexts[-1].privacy.value == "local_only"


async def test_each_token_user_has_the_user_limits_of_their_own(tmp_path, keys):
    """`user_limits` apply per `sub`: alice's second request in the minute is 429 naming the limit; bob's
    first still goes through."""
    svc = sso_service(tmp_path, keys, user_limits={"requests_per_minute": 1})
    async with client(svc) as c:
        async def ask(sub):
            return await c.post("/v1/chat/completions", json=CHAT,
                                headers={"authorization": f"Bearer {token(keys, sub=sub)}"})

        assert (await ask("alice")).status_code == 200
        r = await ask("alice")
        assert r.status_code == 429 and r.json()["error"]["code"] == "requests_per_minute"
        assert int(r.headers["retry-after"]) >= 1
        assert (await ask("bob")).status_code == 200

"""SSO: `TokenVerifier` checks an OIDC/JWT bearer token with PyJWT against the identity provider's JWKS
and maps its claims to an `Identity` (`auth.jwt`).

    signature   a key of the JWKS (by `kid`), one of `algorithms` (asymmetric only: never none or HS*)
    claims      exp, iat, sub, iss and aud required; iss == issuer, aud contains audience; leeway_s of skew
    role        the `role_claim` (a string or a list) through `role_map` (admin/operator/user map to
                themselves); the highest wins; none mapped: `default_role`, else 403
    team        the `team_claim`; limits: `user_limits` per `sub`, and the team's
    privacy     the `privacy_claim` (a string or a list) through `privacy_map` (any/local_only map to
                themselves); the strictest wins, and with the request's header, the team's and the
                site's, the strictest of all holds every LLM call (governance/privacy.py)

The JWKS is a file (read once) or a URL fetched in a worker thread and kept `jwks_cache_s`; a token
naming a key id the set lacks fetches again at once (at most every 30 s: key rotation at the provider).
A JWKS that cannot be fetched gives 503 to token users only; API keys keep working. Verified tokens
are cached until they expire (bounded), so a caller pays the signature check once.
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from ..core.errors import AuthError, BadRequestError, ForbiddenError, IdentityProviderUnavailableError, OverloadedError
from ..core.privacy import strictest
from ..core.types import Privacy
from .identity import Identity, Limits, Role

REFETCH_S = 30.0
_ROLES = {"admin": Role.ADMIN, "operator": Role.OPERATOR, "user": Role.USER}
_PRIVACY = {p.value: p for p in Privacy}


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


class TokenVerifier:
    def __init__(self, settings: Any, *, cache_entries: int = 10_000, clock: Callable[[], float] = time.time,
                 fetch: Callable[[str], bytes] | None = None):
        """`settings`: a config JwtSettings; `fetch(url) -> bytes` (blocking; default urllib, 5 s)."""
        import jwt  # PyJWT (pip install 'nlweb-local[sso]')

        self._jwt = jwt
        self.s = settings
        self._clock = clock
        self._fetch = fetch or _fetch
        self._keys: dict[str, Any] = {}
        self._fetched_at = -1e18
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._max = cache_entries
        u = settings.user_limits
        self.user_limits = Limits(u.requests_per_minute, u.tokens_per_day, u.usd_per_day, u.usd_per_month)
        if settings.jwks_file:
            try:
                self._keys = self._parse(Path(settings.jwks_file).expanduser().read_bytes(), settings.jwks_file)
            except (OSError, OverloadedError) as e:
                raise BadRequestError(f"auth.jwt.jwks_file: {getattr(e, 'message', e)}") from None

    def _parse(self, raw: bytes, where: str) -> dict[str, Any]:
        try:
            keys = self._jwt.PyJWKSet.from_dict(json.loads(raw)).keys
        except (ValueError, self._jwt.PyJWTError) as e:
            raise OverloadedError(f"the JWKS at {where} is not a valid key set ({e}); token users are refused "
                                  "until it is", retry_after=REFETCH_S) from None
        return {k.key_id or "": k for k in keys}

    async def _key(self, kid: str) -> Any:
        url = self.s.jwks_url
        if url is None:  # a file: what it holds is all there is
            key = self._keys.get(kid)
            if key is None:
                raise AuthError(f"the token's key id {kid!r} is not in the JWKS file")
            return key
        if self._clock() - self._fetched_at < self.s.jwks_cache_s and kid in self._keys:
            return self._keys[kid]
        async with self._lock:  # one fetch at a time; the others find its result
            age = self._clock() - self._fetched_at
            fresh = age < self.s.jwks_cache_s
            if not (fresh and kid in self._keys) and (not fresh or age >= REFETCH_S):
                try:
                    raw = await asyncio.to_thread(self._fetch, url)
                except Exception as e:  # noqa: BLE001  (DNS, refused, timeout, an HTTP error)
                    if not fresh:
                        raise IdentityProviderUnavailableError(f"the identity provider's JWKS cannot be fetched ({type(e).__name__}); "
                                                              "token users are refused until it can (API keys keep "
                                                              "working)", retry_after=REFETCH_S) from None
                else:
                    self._keys, self._fetched_at = self._parse(raw, url), self._clock()
        key = self._keys.get(kid)
        if key is None:
            raise AuthError(f"the token's key id {kid!r} is not in the identity provider's JWKS")
        return key

    async def authenticate(self, token: str) -> Identity:
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None and now < hit[1]:
            return hit[0]
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed bearer token: not a JWT (nor an API key)") from None
        if header.get("alg") not in self.s.algorithms:
            raise AuthError(f"token signed with {header.get('alg')!r}; accepted: {', '.join(self.s.algorithms)}")
        key = await self._key(str(header.get("kid") or ""))
        try:
            claims = jwt.decode(token, key=key, algorithms=self.s.algorithms, audience=self.s.audience,
                                issuer=self.s.issuer, leeway=self.s.leeway_s,
                                options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("the token expired; get a new one from the identity provider") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"the token is not meant for this service (aud must include {self.s.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"the token was issued by another identity provider (iss must be {self.s.issuer!r})") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"the token lacks the claim {e.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not verify") from None
        except jwt.PyJWTError as e:
            raise AuthError(f"invalid token: {e}") from None
        ident = self._identity(claims)
        if len(self._cache) >= self._max:
            self._cache.popitem(last=False)
        self._cache[token] = (ident, float(claims["exp"]))
        return ident

    def _identity(self, claims: dict[str, Any]) -> Identity:
        sub = str(claims["sub"])
        raw = claims.get(self.s.role_claim)
        values = raw if isinstance(raw, list) else [raw] if raw is not None else []
        roles = [r for v in values if isinstance(v, str)
                 for r in [_ROLES.get(self.s.role_map.get(v, v))] if r is not None]
        if roles:
            role = max(roles)
        elif self.s.default_role:
            role = _ROLES[self.s.default_role]
        else:
            raise ForbiddenError(f"the token of {sub!r} carries no role this service knows (claim "
                                 f"{self.s.role_claim!r}: {raw!r}); ask an admin to map it (auth.jwt.role_map)")
        team = claims.get(self.s.team_claim)
        return Identity(key_id=f"sub:{sub}", name=sub, role=role, team=team if isinstance(team, str) else "",
                        subject=sub, limits=self.user_limits, privacy=self._privacy(claims))

    def _privacy(self, claims: dict[str, Any]) -> Privacy:
        """The strictest class the `privacy_claim` maps to (values not mapped: ignored; none: any)."""
        raw = claims.get(self.s.privacy_claim)
        values = raw if isinstance(raw, list) else [raw] if raw is not None else []
        return strictest(*(p for v in values if isinstance(v, str)
                           for p in [_PRIVACY.get(self.s.privacy_map.get(v, v))] if p is not None))


def _fetch(url: str) -> bytes:
    if not url.startswith(("https://", "http://")):
        raise ValueError("the JWKS URL must be http(s)")
    with urllib.request.urlopen(url, timeout=5.0) as r:  # noqa: S310  (an operator-configured URL)
        return r.read(1_000_000)

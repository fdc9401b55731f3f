"""One error tree for the whole project. Each error knows its HTTP status and OpenAI error type.

    NlwebError
    ├── BadRequestError            400  invalid_request_error   (not retryable)
    │   ├── PayloadTooLargeError   413
    │   ├── RequestTimeoutError    408  the request body did not arrive in time (server.body_timeout_s)
    │   └── ContextLengthError     400  invalid_request_error, code context_length_exceeded
    ├── AuthError                  401  authentication_error     (also 403 upstream)
    │   └── ForbiddenError         403  permission_error         (authenticated, but the role or scope does not allow it)
    ├── NotFoundError              404  not_found_error          (model, site, ...)
    │   └── ModelNotFoundError     404  invalid_request_error, code model_not_found (as OpenAI)
    ├── SourceError                     an ingestion source that cannot be read or parsed
    │   └── SiteConflictError      409  its items are already in another site (a url is in one site)
    ├── StoreBusyError                  the embedded vector store is held by another process
    ├── EmbedderMismatchError           the vector store was built by another embedding model (or dimension)
    └── ProviderError              500  server_error             (retryable)
        ├── ProviderTimeoutError   504  timeout
        ├── ProviderConnectionError 502
        ├── OverloadedError        503  (an engine or upstream is overloaded; carries retry_after)
        │   ├── QueueFullError     503  nlweb-local's own queue in front of an engine cannot take the
        │   │                           call before its deadline: back-pressure, never a breaker failure
        │   │   └── InsufficientMemoryError 507  a model larger than the host's memory budget (llm.memory)
        │   ├── NoDeploymentError  503  nothing can serve now (carries the reason per deployment)
        │   ├── IdentityProviderUnavailableError 503  SSO's JWKS cannot be fetched: token users wait,
        │   │                           API keys keep working (its message is ours: told as it is)
        │   └── KeyStoreUnavailableError 503  the key store (PostgreSQL) cannot be reached: keys cannot
        │                               be checked now (its message is ours; the driver's words are logged)
        ├── RateLimitedError       429  (carries retry_after)
        │   └── QuotaExceededError 429  a caller's own limit (key or team): names the limit, says when it resets
        ├── StreamInterruptedError 502  a stream failed after tokens were sent (not retried)
        └── ModelOutputError       502  the model answered, but not in the shape asked for

Messages say what to do about the problem. What a *caller* is told is `public_message`: the message
itself, except for errors that relay an engine's or upstream's words (5xx from a deployment, an upstream
429): those may hold internal URLs, exception text or account ids, so the caller gets a summary and the
HTTP edge logs the full message under the request id.
"""
from __future__ import annotations

import math


class NlwebError(Exception):
    status: int = 500
    openai_type: str = "server_error"
    openai_code: str | None = None  # OpenAI's `code` when it differs from the type (e.g. model_not_found)
    retryable: bool = False

    def __init__(self, message: str, *, deployment: str | None = None, body: str | None = None):
        super().__init__(message)
        self.message = message
        self.deployment = deployment
        self.body = body

    @property
    def public_message(self) -> str:
        """What the caller may be told (see the module docstring)."""
        return self.message


class BadRequestError(NlwebError):
    status = 400
    openai_type = "invalid_request_error"


class PayloadTooLargeError(BadRequestError):
    status = 413


class RequestTimeoutError(BadRequestError):
    """The client did not send its whole request body within `server.body_timeout_s`."""

    status = 408


class ContextLengthError(BadRequestError):
    openai_code = "context_length_exceeded"


class AuthError(NlwebError):
    status = 401
    openai_type = "authentication_error"


class ForbiddenError(AuthError):
    """The caller is known, but its role or scope (models, sites) does not allow this."""

    status = 403
    openai_type = "permission_error"


class NotFoundError(NlwebError):
    status = 404
    openai_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    openai_type = "invalid_request_error"  # OpenAI: 404, type invalid_request_error, code model_not_found
    openai_code = "model_not_found"


class SourceError(NlwebError):
    """An ingestion source does not exist, cannot be fetched, or cannot be parsed at all."""

    status = 400
    openai_type = "invalid_request_error"


class SiteConflictError(SourceError):
    """Loading a source into a site would move items out of another site (a url belongs to one site):
    refused unless the caller confirms (`nlweb-local ingest --force`)."""

    status = 409


class StoreBusyError(NlwebError):
    status = 503
    openai_type = "server_error"


class EmbedderMismatchError(NlwebError):
    """The vector store's collection was built with another embedding model than the configured one (another
    fingerprint or dimension): its vectors and the new model's cannot be compared. Raised when the store opens,
    so `serve` and `ingest` refuse to start; the message names both models and how to resolve it."""

    status = 500
    openai_type = "server_error"


class ProviderError(NlwebError):
    status = 500
    openai_type = "server_error"
    retryable = True
    summary = "failed"  # what the caller is told instead of the upstream's words

    @property
    def public_message(self) -> str:
        who = f"deployment {self.deployment!r}" if self.deployment and self.deployment != "router" else "the model"
        return f"{who} {self.summary} (details are in the server log under this request's x-request-id)"


class ProviderTimeoutError(ProviderError):
    status = 504
    openai_type = "timeout"
    summary = "did not answer in time"


class ProviderConnectionError(ProviderError):
    status = 502
    summary = "could not be reached, or its answer was cut off"


class OverloadedError(ProviderError):
    status = 503
    summary = "is overloaded; retry later"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after if math.isfinite(retry_after) and retry_after > 0 else 1.0


class IdentityProviderUnavailableError(OverloadedError):
    """The identity provider's JWKS cannot be fetched: SSO token users are refused until it can."""

    @property
    def public_message(self) -> str:
        return self.message  # nlweb-local's own words (the exception type only, never the URL)


class KeyStoreUnavailableError(OverloadedError):
    """The key store cannot be read or written now (its database is down): keys cannot be checked."""

    @property
    def public_message(self) -> str:
        return self.message  # nlweb-local's own words (the driver's are in the server log)


class QueueFullError(OverloadedError):
    """The gateway's own queue for an in-process engine is full, or the call could not get its turn
    before its deadline. The deployment is fine — it is busy — so circuit breakers do not count it;
    `retry_after` is the measured time until the queue drains."""

    @property
    def public_message(self) -> str:  # nlweb-local's own words, about its own queue
        return self.message


class InsufficientMemoryError(QueueFullError):
    """A model that cannot fit in the host's memory budget even with every other model unloaded: it is
    never loaded (no OOM kill); the message names the budget and the model's size."""

    status = 507


class NoDeploymentError(OverloadedError):
    def __init__(self, message: str, *, reasons: dict[str, str], retry_after: float = 1.0,
                 failed: tuple[str, ...] = (), **kw):
        """`reasons`: why each deployment could not serve; `failed`: those whose reason is an engine's own
        error (told to the caller only as "failed"; the router's reasons, such as an open breaker, are told)."""
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        super().__init__(f"{message} ({detail})" if detail else message, retry_after=retry_after, **kw)
        self.reasons = reasons
        self.failed = failed
        self._summary = message

    @property
    def public_message(self) -> str:
        detail = "; ".join(f"{k}: {'failed' if k in self.failed else v}" for k, v in self.reasons.items())
        return f"{self._summary} ({detail})" if detail else self._summary


class StreamInterruptedError(ProviderError):
    status = 502
    retryable = False
    summary = "failed after the answer had started"


class RateLimitedError(ProviderError):
    status = 429
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        ok = retry_after is not None and math.isfinite(retry_after) and retry_after >= 0
        self.retry_after = retry_after if ok else None

    @property
    def public_message(self) -> str:
        """An upstream's 429 (it names a deployment, or carries the upstream's body) is summarised; a limit
        nlweb-local itself enforces says which limit, in its own words."""
        if self.body is None and self.deployment in (None, "", "router"):
            return self.message
        return f"deployment {self.deployment!r} is rate limited upstream; retry later"


class ModelOutputError(ProviderError):
    """The model answered but its output could not be coerced to the requested shape."""

    status = 502
    retryable = False
    summary = "answered, but not in the shape asked for"


class QuotaExceededError(RateLimitedError):
    """A caller's own limit (requests/minute, tokens/day, dollars/day of a key or a team) is reached.
    `openai_code` names the limit; `retry_after` is the time until its window resets. Not retryable
    sooner: the router never sees it (governance wraps the router)."""

    retryable = False

    def __init__(self, message: str, *, limit: str, retry_after: float, **kw):
        super().__init__(message, retry_after=retry_after, **kw)
        self.limit = limit
        self.openai_code = limit

    @property
    def public_message(self) -> str:
        return self.message  # nlweb-local's own limit, in its own words

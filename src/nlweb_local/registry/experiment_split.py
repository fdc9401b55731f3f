"""`ExperimentSplit`: the wrapper that serves a registry alias's running A/B experiment.

In the gateway fold it sits inside governance (so the caller is on the context) and outside the
response cache (whose key names the deployments a request is pinned to, so one variant's cached answer
is never served for another). For a request whose `model` is an alias with a running experiment, and
whose pin is still the one the alias resolves to (nobody narrowed it — e.g. a key scoped to one
deployment is left alone), it re-pins the request to the deployments serving the variant that
`Experiment.assign` picks for the request's sticky key:

    the conversation (x-nlweb-conversation, /ask's conversation id)  else  the caller (API key id)
    else  the request id (no stickiness: each request is drawn by the weights)

and counts the assignment (`nlweb_ab_assignments_total{alias, variant}`). The served version is then
named by `x-nlweb-route` and the ledger's `model_version`, as for any request. It reads the experiments
from the registry's in-memory alias view (reloaded on change, polled across replicas): no database on
the request path.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

from ..core.types import ChatChunk, ChatRequest
from ..providers.base import Provider
from ..providers.wrapper import CallKind, WrapperProvider


class ExperimentSplit(WrapperProvider):
    def __init__(self, inner: Provider, *, view: Any, resolve: Callable[[str], tuple[str, ...]],
                 request_id: Callable[[], str] = lambda: "", count: Callable[[str, str], None] | None = None):
        """`view`: the registry's `RegistryAliases` (its `experiments`, `current()`); `resolve(model)`: the
        deployments a model name (an alias, a NAME@VERSION) stands for now (the router's)."""
        super().__init__(inner)
        self._view = view
        self._resolve = resolve
        self._request_id = request_id
        self._count = count

    def split(self, request: ChatRequest) -> ChatRequest:
        """The request, re-pinned to its variant's deployments when an experiment runs on its alias."""
        model = request.model
        if not model:
            return request
        self._view.current()  # (starts a poll when one is due)
        exp = self._view.experiments.get(model)
        if exp is None:
            return request
        ctx = request.context
        try:
            if ctx.deployments != self._resolve(model):
                return request
            key = ctx.conversation or (f"caller:{ctx.caller}" if ctx.caller else "") or self._request_id()
            variant = exp.assign(key or str(id(request)))
            pinned = self._resolve(variant)
        except Exception:  # noqa: BLE001  (the alias would fail the request just the same below: let it)
            return request
        if not pinned:
            return request
        if self._count is not None:
            self._count(exp.alias, variant)
        request.context = ctx.with_(deployments=pinned)  # (in place: the edge made the request for this call)
        return request

    async def around_call(self, kind: CallKind, subject: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        if kind != "embed":
            self.split(subject)
        return await run()

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self.inner.stream(self.split(request))


def assignment_counter(registry: Any) -> Callable[[str, str], None]:
    """`count(alias, variant)` on a Prometheus counter in `registry` (the gateway metrics' registry)."""
    from prometheus_client import Counter

    counter = Counter("nlweb_ab_assignments", "requests for an alias under an A/B experiment, by the variant "
                      "(NAME@VERSION) they were assigned to", ["alias", "variant"], registry=registry)
    return lambda alias, variant: counter.labels(alias, variant).inc()


def split_wrapper(registry: Any, router: Any, telemetry: Any = None) -> Callable[[Provider], Provider] | None:
    """The fold's wrapper for `registry`'s experiments (None without a registry view)."""
    view = getattr(registry, "view", None)
    if view is None:
        return None
    from ..telemetry.context import current_request_id

    count = assignment_counter(telemetry.metrics.registry) if telemetry is not None else None
    return lambda inner: ExperimentSplit(inner, view=view, resolve=router.resolve_model,
                                         request_id=current_request_id, count=count)

"""`GET /admin/fleet`: every deployment with its instances — health, breaker, calls in flight, the engine's
queue, EWMA latency, how old the last scrape is and the models it has loaded (Ollama /api/ps, vLLM /metrics,
a local engine's /models, llama-server /slots where they name it; an in-process engine: its own state, which
the memory budget drives) — over the router's typed API (`router.provider(name)`
and `find(..., Fleet)`). A deployment with one URL (or in-process) is a fleet of one: one row, from the
router's own view of it. `admission`: the deployment's gate (fleet.slots): slots, running, waiting, the
measured drain rate, calls displaced and refused (None without one)."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..fleet.admission import AdmissionGate
from ..fleet.fleet import Fleet
from ..providers.wrapper import find


def fleet_view(router: Any) -> dict[str, Any]:
    out = []
    for name in router.names():
        fleet = find(router.provider(name), Fleet)
        v = router.view(name)
        if fleet is not None:
            instances = [s.as_dict() for s in fleet.status()]
        else:
            load = router.load(name)
            instances = [{"url": None, "up": v.healthy and v.admits, "healthy": v.healthy, "detail": load.detail,
                          "breaker": v.breaker, "in_flight": v.in_flight, "waiting": load.waiting, "running": load.running,
                          "ewma_latency_s": None if v.ewma_ttft_s is None else round(v.ewma_ttft_s, 4),
                          "kv_cache_usage": load.kv_cache_usage, "scrape_age_s": None, "served": None, "failed": None,
                          "models": None if load.models is None else list(load.models)}]
        gate = find(router.provider(name), AdmissionGate)  # fleet.slots: its bounded, prioritised queue
        out.append({"deployment": name, "model": v.info.model, "breaker": v.breaker,
                    "policy": fleet.policy_name if fleet is not None else None, "instances": instances,
                    "admission": gate.status() if gate is not None else None})
    return {"deployments": out}


def with_replicas(view: dict[str, Any], replicas: Any) -> dict[str, Any]:
    """`view` with, for each deployment whose replicas nlweb-local launches (`fleet.replicas.ReplicaSets`),
    `replicas`: the launched processes (pid, port, URL, state: starting, serving, draining, stopping; age)
    and its autoscaler (current and desired replicas, bounds, queue depth, the last decision's reason, scale
    events)."""
    for row in view["deployments"]:
        launched = replicas.get(row["deployment"]) if replicas else None
        if launched is not None:
            row["replicas"] = launched.view()
    return view


def fleet_routes(router: Any, replicas: Any = None) -> list[Route]:
    async def fleet(request: Request) -> Response:
        return JSONResponse(with_replicas(fleet_view(router), replicas))

    return [Route("/admin/fleet", fleet)]

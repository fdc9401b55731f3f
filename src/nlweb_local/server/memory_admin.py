"""`GET /admin/memory`: the host's model memory budget — the budgets (RAM, GPU), what is counted against
them, the process's RSS, and every managed model: loaded or not, its size (budgeted and measured), calls
in progress, idle time, keep_alive, loads and evictions. Without `llm.memory` budgets: `{"enabled": false}`."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def memory_routes(memory: Any) -> list[Route]:
    async def view(request: Request) -> Response:
        if memory is None:
            return JSONResponse({"enabled": False, "hint": "set llm.memory.budget_mb to load in-process models on "
                                 "demand within a memory budget"})
        return JSONResponse({"enabled": True, **memory.snapshot()})

    return [Route("/admin/memory", view)]

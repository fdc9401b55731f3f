"""`nlweb-local deploy k8s`: manifests generated from a sample config, every document validated offline
(Kubernetes kinds against the Kubernetes schemas by kubernetes-validate, strict; KEDA's ScaledObject against
the shipped schema), and broken manifests refused (the validation can fail)."""
import copy

import pytest
import yaml

from nlweb_local.cli.k8s_manifests import K8sOptions, manifests
from nlweb_local.cli.k8s_validate import validate_all, validate_document
from nlweb_local.cli.main import main
from nlweb_local.config.settings import load_settings
from nlweb_local.core.errors import BadRequestError

SAMPLE = """
auth:
  enabled: true
  jwt: {jwks_url: "https://idp.example.com/jwks.json", issuer: "https://idp.example.com", audience: nlweb}
cache_store: {redis_url: "redis://:s3cret-redis@redis:6379/0"}
registry: {database_url: "postgresql://nlweb:s3cret-pg@postgres/nlweb"}
llm:
  model_path: /srv/models/SmolLM2-135M-Instruct.Q4_1.gguf
  deployments:
    - {name: gemma, engine: llama_cpp, model: /srv/models/gemma-3-270m-q4_k_m.gguf, options: {n_ctx: 4096},
       memory_mb: 350, tier: 1}
    - {name: ollama, engine: ollama, model: "llama3.2:1b", url: "http://ollama:11434"}
    - {name: gpt, engine: openai, model: gpt-4o-mini, url: "https://api.openai.com/v1", api_key: sk-s3cret-inline}
"""


@pytest.fixture
def settings(tmp_path):
    path = tmp_path / "nlweb-local.yaml"
    path.write_text(SAMPLE)
    return load_settings(path, environ={})


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("autoscaler", ["hpa", "keda"])
def test_every_generated_document_is_valid(settings, autoscaler):
    docs, notes = manifests(settings, K8sOptions(autoscaler=autoscaler, namespace="search"))
    assert validate_all(docs) == len(docs) == 9  # ConfigMap + gateway (2) + two engines x (Deployment, Service, scaler)
    text = yaml.safe_dump_all(docs)
    for secret in ("s3cret-redis", "s3cret-pg", "sk-s3cret-inline"):
        assert secret not in text  # connection URLs and keys come from the Secret, never inline
    engines = {n: d for n, d in by_kind(docs, "Deployment").items() if "engine" in n}
    assert set(engines) == {"nlweb-local-engine-local", "nlweb-local-engine-gemma"}  # the in-process llama.cpp ones
    gemma = engines["nlweb-local-engine-gemma"]["spec"]["template"]["spec"]
    args = gemma["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/models/gemma-3-270m-q4_k_m.gguf"
    assert gemma["volumes"][0]["persistentVolumeClaim"]["claimName"] == "nlweb-models"
    scaler = "HorizontalPodAutoscaler" if autoscaler == "hpa" else "ScaledObject"
    assert set(by_kind(docs, scaler)) == set(engines)
    assert any("kubectl create secret generic nlweb-local" in n for n in notes)


def test_gateway_replicas_share_state_through_the_secret(settings, tmp_path):
    docs, _ = manifests(settings, K8sOptions(replicas=3))
    gateway = by_kind(docs, "Deployment")["nlweb-local"]
    assert gateway["spec"]["replicas"] == 3
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NLWEB_LOCAL_CACHE_STORE__REDIS_URL"]["key"] == env["NLWEB_LOCAL_AUTH__LIMITS_REDIS_URL"]["key"] == "redis-url"
    assert env["NLWEB_LOCAL_REGISTRY__DATABASE_URL"]["key"] == env["NLWEB_LOCAL_AUDIT__DATABASE_URL"]["key"] == "database-url"
    assert env["NLWEB_KEY_GPT"] == {"name": "nlweb-local", "key": "nlweb-key-gpt"}
    # API keys are shared too: the key store in PostgreSQL, hashed with one secret file from the Secret
    assert env["NLWEB_LOCAL_AUTH__KEYS_DATABASE_URL"]["key"] == "database-url"
    pod = gateway["spec"]["template"]["spec"]
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "auth-secret")
    assert secret_volume["secret"]["secretName"] == "nlweb-local"
    assert {"name": "auth-secret", "mountPath": "/etc/nlweb-local-secret", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["nlweb-local-config"]["data"]["nlweb-local.yaml"])
    deployments = {d["name"]: d for d in config["llm"]["deployments"]}
    # the launched engines become llama_server deployments at their Service, still local; the others stay as they were
    assert deployments["gemma"] == {"name": "gemma", "engine": "llama_server", "model": "gemma", "tier": 1,
                                    "url": "http://nlweb-local-engine-gemma:8080/v1", "context_window": 4096,
                                    "location": "local"}
    assert deployments["ollama"]["url"] == "http://ollama:11434"
    assert deployments["gpt"]["api_key_env"] == "NLWEB_KEY_GPT" and "api_key" not in deployments["gpt"]
    assert config["llm"]["embedded_enabled"] is False and config["store"]["url"] == "http://qdrant:6333"
    assert config["auth"]["secret_path"] == "/etc/nlweb-local-secret/auth-secret"
    # the config the ConfigMap holds loads as settings, with the Secret's URLs given as the pod's environment
    path = tmp_path / "k8s.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_settings(path, environ={"NLWEB_LOCAL_CACHE_STORE__REDIS_URL": "redis://redis:6379/0"})
    assert loaded.cache_store.redis_url == "redis://redis:6379/0" and len(loaded.llm.all_deployments()) == 4


def test_a_broken_manifest_fails_validation(settings):
    docs, _ = manifests(settings, K8sOptions(autoscaler="keda"))
    engine = by_kind(docs, "Deployment")["nlweb-local-engine-gemma"]
    broken = copy.deepcopy(engine)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(BadRequestError, match="spec.replicas"):
        validate_document(broken)
    broken = copy.deepcopy(engine)
    broken["spec"]["template"]["spec"]["containers"][0]["argz"] = []  # strict: an unknown field is an error
    with pytest.raises(BadRequestError, match="argz"):
        validate_document(broken)
    hpa = manifests(settings, K8sOptions(autoscaler="hpa"))[0]
    broken = copy.deepcopy(by_kind(hpa, "HorizontalPodAutoscaler")["nlweb-local-engine-gemma"])
    broken["spec"]["metrics"][0]["external"]["target"]["type"] = 7
    with pytest.raises(BadRequestError, match="target.type"):
        validate_document(broken)
    scaled = by_kind(docs, "ScaledObject")["nlweb-local-engine-gemma"]
    for break_it, where in ((lambda s: s["spec"].pop("scaleTargetRef"), "scaleTargetRef"),
                            (lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=2), "threshold"),
                            (lambda s: s["spec"]["triggers"][0]["metadata"].pop("query"), "query")):
        broken = copy.deepcopy(scaled)
        break_it(broken)
        with pytest.raises(BadRequestError, match=where):
            validate_document(broken)
    validate_document(scaled)  # the unbroken one passes


def test_the_command_writes_validated_files(tmp_path, capsys):
    cfg = tmp_path / "nlweb-local.yaml"
    cfg.write_text(SAMPLE)
    out = tmp_path / "k8s"
    assert main(["--config", str(cfg), "deploy", "k8s", "--out", str(out), "--autoscaler", "keda", "--validate"]) == 0
    printed = capsys.readouterr()
    files = sorted(out.iterdir())
    assert [str(f) for f in files] == printed.out.split()
    assert len(files) == 9 and "9 objects valid" in printed.err
    assert validate_all(yaml.safe_load(f.read_text()) for f in files) == 9
    assert main(["--config", str(cfg), "deploy", "k8s"]) == 0  # stdout: one stream of documents
    assert len([d for d in yaml.safe_load_all(capsys.readouterr().out) if d]) == 9


def test_refusals(tmp_path, capsys):
    cfg = tmp_path / "open.yaml"
    cfg.write_text("llm: {embedded_enabled: true}\n")
    assert main(["--config", str(cfg), "deploy", "k8s"]) == 2  # no auth: refused unless --insecure
    assert "--insecure" in capsys.readouterr().err
    assert main(["--config", str(cfg), "deploy", "k8s", "--insecure", "--replicas", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["--config", str(cfg), "deploy", "k8s", "--insecure"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    gateway = by_kind(docs, "Deployment")["nlweb-local"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["command"][-1] == "--insecure"


def test_the_readme_several_engines_example_loads_and_deploys(tmp_path):
    """README's "Running several engines" example (two llama-server instances, one Ollama) is valid settings;
    deployed, its URL deployments stay as they are and the embedded engine becomes a llama-server workload."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Running several engines", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = tmp_path / "several.yaml"
    cfg.write_text(example)
    settings = load_settings(cfg, environ={})
    llama, ollama = settings.llm.deployments
    assert (llama.engine, len(llama.instances), llama.fleet.policy) == ("llama_server", 2, "p2c")
    assert (ollama.engine, ollama.url, ollama.instances) == ("ollama", "http://127.0.0.1:11434", [])
    docs, _ = manifests(settings, K8sOptions(insecure=True))
    assert validate_all(docs) == len(docs)
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["nlweb-local-config"]["data"]["nlweb-local.yaml"])
    assert [d["name"] for d in config["llm"]["deployments"]] == ["local", "llama", "ollama"]
    assert config["llm"]["deployments"][1]["instances"] == llama.instances
    assert set(by_kind(docs, "Deployment")) == {"nlweb-local", "nlweb-local-engine-local"}


def test_launched_replicas_become_engine_pods_with_their_own_bounds(tmp_path):
    """A llama_cpp_server deployment that nlweb-local launches (`replicas` / `autoscale`) becomes llama-server
    pods: autoscale's min/max bound the autoscaler; a fixed `replicas: N` is N pods and no autoscaler."""
    path = tmp_path / "nlweb-local.yaml"
    path.write_text("""
auth: {enabled: true}
llm:
  embedded_enabled: false
  deployments:
    - {name: scaled, engine: llama_cpp_server, model: /srv/models/a.gguf, autoscale: {min_replicas: 2, max_replicas: 5}}
    - {name: fixed, engine: llama_cpp_server, model: /srv/models/b.gguf, replicas: 3}
""")
    docs, _ = manifests(load_settings(path, environ={}), K8sOptions(autoscaler="hpa"))
    assert validate_all(docs) == len(docs)  # raises on an invalid document
    engines = by_kind(docs, "Deployment")
    assert engines["nlweb-local-engine-scaled"]["spec"]["replicas"] == 2
    assert engines["nlweb-local-engine-fixed"]["spec"]["replicas"] == 3
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"nlweb-local-engine-scaled"}
    spec = hpas["nlweb-local-engine-scaled"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 5)
    assert spec["metrics"][0]["external"]["target"] == {"type": "AverageValue", "averageValue": "2"}
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["nlweb-local-config"]["data"]["nlweb-local.yaml"])
    gateway_view = {d["name"]: d for d in config["llm"]["deployments"]}
    assert gateway_view["scaled"]["engine"] == "llama_server" and "autoscale" not in gateway_view["scaled"]
    assert gateway_view["fixed"]["url"] == "http://nlweb-local-engine-fixed:8080/v1"

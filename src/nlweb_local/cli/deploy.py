"""`nlweb-local deploy k8s`: Kubernetes manifests generated from the settings (cli/k8s_manifests.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config.settings import Settings
from .k8s_manifests import K8sOptions

K8S_DESCRIPTION = """\
Write Kubernetes manifests for the settings (--config): nothing is applied, no cluster is needed.

What you get:
  gateway    ConfigMap (the settings), Deployment (--replicas, at least 2) and Service of nlweb-local itself.
             The replicas agree through shared state: caches and limit counters in Redis, the model
             registry and the audit log in PostgreSQL, the index in a Qdrant server (store.url, else
             --qdrant-url). Connection URLs and API keys are read from the Secret --secret, which you
             create (the manifests only reference it; nothing secret is written in them).
  engines    each llama.cpp model nlweb-local would run in-process (the embedded engine and every
             `llama_cpp` deployment) becomes a Deployment + Service of llama-server (--engine-image),
             reading its GGUF file from the volume claim --models-claim at /models (the file name the
             config names; the packaged SmolLM2 is SmolLM2-135M-Instruct.Q4_1.gguf). The gateway's config
             calls it at its Service as a `llama_server` deployment of the same name.
  autoscale  per engine, on the queue depth the gateway exports (--queue-metric, per deployment label):
             a HorizontalPodAutoscaler autoscaling/v2 with an External metric (needs a Prometheus
             metrics adapter), or a KEDA ScaledObject with a prometheus trigger (--autoscaler keda).
Deployments reached by URL (Ollama, vLLM, cloud APIs) stay where the config says.
The notes printed on stderr say what the Secret must hold and which model files the volume needs."""

K8S_EPILOG = """examples:
  nlweb-local deploy k8s --insecure | kubectl apply -f -     # to the current namespace
  nlweb-local deploy k8s --out k8s/ --autoscaler keda --validate
  nlweb-local --config prod.yaml deploy k8s --namespace search --image registry.example/nlweb-local:0.1.0 --out k8s/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="deployment files for other platforms (Kubernetes)",
                       description="Generate deployment files from the settings.")
    group = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    k = group.add_parser("k8s", help="Kubernetes manifests: gateway, engines, autoscalers",
                         description=K8S_DESCRIPTION, epilog=K8S_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    d = K8sOptions()
    k.add_argument("--out", metavar="DIR", help="write one YAML file per object into DIR (default: all to stdout, "
                   "separated by ---)")
    k.add_argument("--name", default=d.name, help=f"name of the gateway's objects and prefix of the engines' (default {d.name})")
    k.add_argument("--namespace", help="metadata.namespace of every object (default: none, kubectl's current one)")
    k.add_argument("--image", default=d.image, help="the gateway's container image: one with nlweb-local installed "
                   f"(with the postgres extra), its `nlweb-local` on PATH (default {d.image})")
    k.add_argument("--replicas", type=int, default=d.replicas, help=f"gateway replicas, at least 2 (default {d.replicas})")
    k.add_argument("--secret", default=d.secret, help="the Secret holding redis-url, database-url and API keys "
                   f"(default {d.secret})")
    k.add_argument("--qdrant-url", default=d.qdrant_url, help=f"Qdrant server when store.url is not set (default {d.qdrant_url})")
    k.add_argument("--insecure", action="store_true", help="serve without auth when auth.enabled is off (a "
                   "cluster-internal service behind auth of your own); without it the command refuses")
    k.add_argument("--engine-image", default=d.engine_image, help=f"llama-server image (default {d.engine_image})")
    k.add_argument("--models-claim", default=d.models_claim, help=f"PersistentVolumeClaim holding the GGUF files (default {d.models_claim})")
    k.add_argument("--parallel", type=int, default=d.parallel, help="llama-server slots per engine pod; each gets "
                   f"the deployment's n_ctx (default {d.parallel})")
    k.add_argument("--autoscaler", choices=("hpa", "keda", "none"), default=d.autoscaler,
                   help=f"engines' autoscaler (default {d.autoscaler})")
    k.add_argument("--min-replicas", type=int, default=d.min_replicas, help=f"engine pods at least (default {d.min_replicas})")
    k.add_argument("--max-replicas", type=int, default=d.max_replicas, help=f"engine pods at most (default {d.max_replicas})")
    k.add_argument("--queue-metric", default=d.queue_metric, help="the gateway's metric of requests queued per "
                   f"deployment (label deployment) (default {d.queue_metric})")
    k.add_argument("--queue-target", type=float, default=d.queue_target, help="queued requests per engine pod "
                   f"above which it scales out (default {d.queue_target:g})")
    k.add_argument("--prometheus-url", default=d.prometheus_url, help=f"KEDA: the Prometheus to query (default {d.prometheus_url})")
    k.add_argument("--validate", action="store_true", help="check every object offline against the Kubernetes "
                   "schemas (kubernetes-validate, strict) and KEDA's ScaledObject schema; needs pip install "
                   "'nlweb-local[k8s]'")
    k.set_defaults(func=run_k8s)


def options_from(args: argparse.Namespace) -> K8sOptions:
    return K8sOptions(name=args.name, namespace=args.namespace, image=args.image, engine_image=args.engine_image,
                      replicas=args.replicas, models_claim=args.models_claim, secret=args.secret,
                      qdrant_url=args.qdrant_url, autoscaler=args.autoscaler, min_replicas=args.min_replicas,
                      max_replicas=args.max_replicas, queue_metric=args.queue_metric, queue_target=args.queue_target,
                      prometheus_url=args.prometheus_url, parallel=args.parallel, insecure=args.insecure)


def run_k8s(args: argparse.Namespace, settings: Settings) -> int:
    import yaml

    from .k8s_manifests import manifests

    docs, notes = manifests(settings, options_from(args))
    if args.validate:
        from .k8s_validate import KUBERNETES_VERSION, validate_all

        n = validate_all(docs)
        notes.append(f"{n} objects valid (Kubernetes {KUBERNETES_VERSION} schemas, strict; KEDA ScaledObject schema)")
    texts = [yaml.safe_dump(doc, sort_keys=False) for doc in docs]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for i, (doc, text) in enumerate(zip(docs, texts)):
            path = out / f"{i:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
            path.write_text(text)
            print(path)
    else:
        sys.stdout.write("---\n".join(texts))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0

"""Inert stand-ins for the embedder and the vector store, for tests of the /v1 gateway path (which never
embeds or searches) that still compose the whole app."""
import tempfile
from pathlib import Path

_DATA = tempfile.TemporaryDirectory(prefix="nlweb-tests-data-")  # (removed when the test run ends)


class NoStore:
    def sites(self):
        return []

    def count(self):
        return 0


class NoEmbedder:
    dimension = 2

    def embed(self, texts):
        return [[1.0, 0.0] for _ in texts]


def service_settings(data_dir, *deployments, **llm):
    """Settings as `serve` loads them (defaults), with data under `data_dir`, the embedded engine named
    `local`, and `deployments` (dicts of DeploymentSettings fields) added; `llm` sets other llm.* keys."""
    from nlweb_local.config.settings import DeploymentSettings, load_settings

    s = load_settings(environ={"NLWEB_LOCAL_DATA_DIR": str(data_dir)})
    s.llm.deployments = [DeploymentSettings(**d) for d in deployments]
    for k, v in llm.items():
        setattr(s.llm, k, v)
    return s


def scripted_service(settings, providers, **overrides):
    """The service exactly as `serve` composes it (`build_components`), with scripted engines in place
    of the adapters (`providers`: deployment name -> provider) and inert embedder and store unless given."""
    from nlweb_local.server.components import build_components

    if Path(settings.data_dir) == Path("data"):  # (the default: the checkout's own data/ folder; a test's key
        settings.data_dir = tempfile.mkdtemp(dir=_DATA.name)  # store and audit log belong in a folder of its own)
    overrides.setdefault("embedder", NoEmbedder())
    overrides.setdefault("store", NoStore())
    return build_components(settings, providers=providers, **overrides)

"""Test helpers around :mod:`evohub.local.hubserver`: the ``hub`` fixture and :func:`use_hub`.

Use the ``hub`` fixture (write ``hub = hubserver.hub`` in a test module to get it): it starts a
:class:`~evohub.local.hubserver.FakeHub` and calls :func:`use_hub`, after which both
``HfApi(endpoint=hub.url, token=hub.token)`` and plain ``HfApi()`` / ``hf_hub_download(...)`` /
``snapshot_download(...)`` (as evohub calls them) talk to it, in this process and in subprocesses.
See evohub/local/hubserver.py for what it serves and how huggingface_hub is pointed at it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evohub.local.hubserver import GITATTRIBUTES, HEX40, TOKEN, USER, Commit, FakeHub, Repo, start_hub

__all__ = ["GITATTRIBUTES", "HEX40", "TOKEN", "USER", "Commit", "FakeHub", "Repo", "hub", "start_hub", "use_hub"]


def use_hub(monkeypatch: pytest.MonkeyPatch, hub: FakeHub, home: Path) -> None:
    """Point huggingface_hub at ``hub`` in this process and in subprocesses (module docstring)."""
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api

    home.mkdir(parents=True, exist_ok=True)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
           "HF_TOKEN": hub.token, "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    patches = {
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"), "AGENT_HARNESSES_PATH": str(home / "agents.json"),
    }  # fmt: skip
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # huggingface_hub.create_repo & co
    import datasets.config as dsconfig  # datasets reads its own copies at import

    datasets_urls = {"HF_ENDPOINT": hub.url, "HUB_DATASETS_URL": hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}",
                     "HF_DATASETS_CACHE": home / "datasets"}  # fmt: skip
    for name, value in {"HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False, **datasets_urls}.items():
        if hasattr(dsconfig, name):
            monkeypatch.setattr(dsconfig, name, value)
    try:
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", {"harnesses": {}, "standardEnvVars": []})
    except (ImportError, AttributeError):  # other huggingface_hub versions
        pass


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running :class:`FakeHub` that huggingface_hub (in and out of process) talks to."""
    server = start_hub()
    try:
        use_hub(monkeypatch, server, tmp_path / "hf_home")
        yield server
    finally:
        server.stop()
    assert not server.errors, "hubserver crashed:\n" + "\n".join(server.errors)

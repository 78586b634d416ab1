"""The session's real Label Studio (one start for the whole test run; see ls_support)."""

from __future__ import annotations

import pytest

from .ls_support import TOKEN, LabelStudioServer, free_port, require_label_studio


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    require_label_studio()
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio") / "data", free_port())
    server.start()
    print(f"\nLabel Studio started in {server.start_seconds[0]:.1f} s at {server.url}")
    try:
        yield server
    finally:
        server.stop()
        print(f"\nLabel Studio: started {len(server.start_seconds)}x in"
              f" {', '.join(f'{t:.1f}' for t in server.start_seconds)} s, used"
              f" {server.cpu_used:.1f} CPU s")


@pytest.fixture(scope="session")
def ls(label_studio):
    """A client of the session's server with the test user's token."""
    from balseg.labelstudio.client import LabelStudio

    client = LabelStudio(label_studio.url, TOKEN)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BALSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "ls-synthetic"



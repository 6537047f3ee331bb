from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import NodeServer, guest_image_built, node_available  # noqa: E402
from stub_server import Reply, StubServer  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's FastVM settings."""
    for name in ("FASTVM_API_KEY", "FASTVM_BASE_URL", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    server = await StubServer().start()
    server.route("GET", "/healthz", Reply(200, {"status": "ok"}))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(scope="session")
def vm_server() -> Iterator[NodeServer]:
    """A real FastVM server with the QEMU runtime (real VMs), shared by the VM tests."""
    if os.environ.get("FASTVM_PY_SKIP_VM") == "1":
        pytest.skip("FASTVM_PY_SKIP_VM=1")
    if not node_available():
        pytest.skip("node and the repository's node_modules are needed for the real server")
    if not guest_image_built():
        pytest.skip("no guest image (~/.cache/fastvm/guest.json): run `npm run setup` first")
    server = NodeServer(fake_runtime=False)
    try:
        yield server
    finally:
        server.stop()

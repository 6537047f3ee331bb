"""Test helpers: a counting TCP proxy, a real FastVM server process, wire samples."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SERVER_MAIN = REPO / "packages" / "server" / "src" / "main.ts"


class CountingProxy:
    """A TCP proxy that counts the connections it accepts (TLS passes through untouched)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        tasks = [
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)


def node_available() -> bool:
    return shutil.which("node") is not None and (REPO / "node_modules" / "tsx").is_dir()


def guest_image_built() -> bool:
    return (Path.home() / ".cache" / "fastvm" / "guest.json").is_file()


class NodeServer:
    """``main.ts serve`` in a child process on a fresh data dir, with its own bootstrap key.

    ``stop()`` deletes every VM and snapshot through the API first (VMs outlive a server stop),
    stops the process, kills any QEMU still recorded in the data dir, and removes the dir.
    """

    def __init__(
        self,
        *,
        fake_runtime: bool,
        tls: tuple[Path, Path] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.key = "fvm_test_" + secrets.token_urlsafe(24)
        base = Path.home() / ".cache" / "fastvm" / "test"
        if not fake_runtime:
            base.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(tempfile.mkdtemp(prefix="py-sdk-", dir=None if fake_runtime else base))
        args = ["node", "--import", "tsx", str(SERVER_MAIN), "serve", "--port", "0"]
        args += ["--data-dir", str(self.data_dir)]
        if fake_runtime:
            args.append("--fake-runtime")
        if tls is not None:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        child_env = dict(os.environ)
        child_env.update(
            {
                "FASTVM_BOOTSTRAP_KEY": self.key,
                "FASTVM_NETWORK": "off",
                "FASTVM_LOG_LEVEL": os.environ.get("FASTVM_TEST_LOG_LEVEL", "warn"),
            }
        )
        child_env.pop("FASTVM_DATABASE_URL", None)
        child_env.update(env or {})
        self.log_path = self.data_dir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=self._log
        )
        self.url = self._wait_for_url()
        # Keep draining stdout (the server logs there) so that the child never blocks on it.
        threading.Thread(target=self._drain, daemon=True).start()
        m = re.match(r"https?://([^:/]+):(\d+)", self.url)
        assert m, self.url
        self.host, self.port = m.group(1), int(m.group(2))

    def _wait_for_url(self, timeout: float = 120.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            m = re.search(r"listening on (\S+)", line)
            if m:
                return m.group(1)
        self.stop()
        raise RuntimeError(f"the FastVM server did not start: {self.log_tail()}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError, OSError):
                self._log.write(line)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def cleanup_api(self) -> None:
        """Deletes every VM and snapshot of the org (synchronously, over HTTP/1.1 via curl-less
        urllib, so it works whatever state the SDK is in)."""
        import ssl
        import urllib.request

        ctx = ssl._create_unverified_context() if self.url.startswith("https") else None

        def call(method: str, path: str) -> Any:
            req = urllib.request.Request(
                self.url + path, method=method, headers={"x-api-key": self.key}
            )
            with urllib.request.urlopen(req, timeout=60, context=ctx) as res:
                body = res.read()
                return json.loads(body) if body else None

        for _ in range(3):
            try:
                for vm in call("GET", "/v1/vms") or []:
                    with contextlib.suppress(Exception):
                        call("DELETE", f"/v1/vms/{vm['id']}")
                for snap in call("GET", "/v1/snapshots") or []:
                    with contextlib.suppress(Exception):
                        call("DELETE", f"/v1/snapshots/{snap['id']}")
                if not call("GET", "/v1/vms"):
                    return
            except Exception:
                time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.cleanup_api()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_leftover_qemu()
        self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _kill_leftover_qemu(self) -> None:
        vms = self.data_dir / "runtime" / "vms"
        if not vms.is_dir():
            return
        for rec in vms.glob("*/vm.json"):
            try:
                pid = int(json.loads(rec.read_text()).get("pid", 0))
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if pid > 0 and str(self.data_dir).encode() in cmdline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (openssl CLI); returns (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def vm_wire(**overrides: Any) -> dict[str, Any]:
    """A VM as the server sends it (with fields the SDK does not model)."""
    vm: dict[str, Any] = {
        "id": "0b7c3a56-1111-4c3e-9a55-2f1c2d3e4f50",
        "name": "my-vm",
        "orgId": "org-1",
        "status": "running",
        "cpu": 1,
        "memoryMiB": 2048,
        "diskGiB": 10,
        "createdAt": "2026-01-02T03:04:05.678Z",
        "machineName": "c1m2",
        "sourceName": "",
        "publicIpv6": "fd00::1234",
        "deletedAt": None,
        "metadata": {"team": "a"},
        "firewall": {"mode": "restricted", "ingress": []},
        "effectiveFirewall": {"mode": "restricted", "ingress": []},
        "statusMessage": None,
        "somethingNew": {"nested": True},
    }
    vm.update(overrides)
    return vm


def snapshot_wire(**overrides: Any) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "id": "5a4b3c2d-2222-4e1f-8a9b-0c1d2e3f4a5b",
        "name": "my-snap",
        "orgId": "org-1",
        "vmId": "0b7c3a56-1111-4c3e-9a55-2f1c2d3e4f50",
        "status": "ready",
        "createdAt": "2026-01-02T03:04:06.000Z",
        "firewall": {"mode": "open", "ingress": []},
        "metadata": {},
        "machineName": "c1m2",
    }
    snap.update(overrides)
    return snap


def exec_wire(**overrides: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "exitCode": 0,
        "stdout": "hello\n",
        "stderr": "",
        "timedOut": False,
        "durationMs": 12,
        "stdoutTruncated": False,
        "stderrTruncated": False,
    }
    r.update(overrides)
    return r

"""The :class:`FastVM` client."""

from __future__ import annotations

import asyncio
import builtins
import email.utils
import json
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    FastVMError,
    QuotaExceededError,
    SnapshotError,
    SnapshotNotReadyError,
    VMLaunchError,
    VMNotReadyError,
    error_from_response,
)
from ._models import (
    VM,
    CommandResult,
    FirewallPolicy,
    Lineage,
    OrgQuotaUsage,
    PatchFirewallPolicy,
    Snapshot,
    command_result_from_wire,
    firewall_to_wire,
    lineage_from_wire,
    patch_to_wire,
    quotas_from_wire,
    snapshot_from_wire,
    vm_from_wire,
)
from ._transport import H2Transport, RawResponse
from ._version import __version__

__all__ = ["FastVM", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "https://api.fastvm.org"
"""The API used when neither ``base_url`` nor ``FASTVM_BASE_URL`` is given."""

_T = TypeVar("_T")

_VM_READY = frozenset({"running"})
_VM_FAILED = frozenset({"error", "stopped", "deleting"})
_SNAPSHOT_READY = frozenset({"ready", "active"})
_SNAPSHOT_FAILED = frozenset({"error", "deleting", "deleted"})
_POLL_FIRST = 0.1
_POLL_MAX = 1.0

if sys.version_info >= (3, 11):

    async def _within(awaitable: Awaitable[_T], seconds: float) -> _T:
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover

    async def _within(awaitable: Awaitable[_T], seconds: float) -> _T:
        return await asyncio.wait_for(awaitable, seconds)


class FastVM:
    """Async client for the FastVM API: launch, snapshot, restore and run commands in microVMs.

    Every call of a client runs on one multiplexed HTTP/2 connection (TLS with ALPN for
    ``https://``, HTTP/2 with prior knowledge for ``http://``), opened by :meth:`warmup` (called
    on ``async with`` entry) or by the first call. ``launch``, ``restore`` and ``snapshot`` block
    until the resource is ready.

    Args:
        api_key: API key, sent as ``X-API-Key``. Defaults to ``FASTVM_API_KEY``; required.
        base_url: API base URL. Defaults to ``FASTVM_BASE_URL``, then ``https://api.fastvm.org``.
        timeout: seconds each call may take (retries included), and the default client-side
            timeout of :meth:`run`.
        max_retries: how often a call that failed in a retryable way is retried (keyword only;
            an addition to the seed API).

    Raises:
        FastVMError: when no API key is given and ``FASTVM_API_KEY`` is unset or empty, or an
            argument is invalid.

    Example::

        async with FastVM() as client:
            vm = await client.launch(machine="c1m2")
            result = await client.run(vm, "echo hello")
            print(result.stdout)  # hello
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 300.0,
        *,
        max_retries: int = 2,
    ) -> None:
        key = _non_empty(api_key) or _non_empty(os.environ.get("FASTVM_API_KEY"))
        if key is None:
            raise FastVMError(
                "No API key: set the FASTVM_API_KEY environment variable or pass it explicitly, "
                'as in FastVM(api_key="...").'
            )
        url = (
            _non_empty(base_url) or _non_empty(os.environ.get("FASTVM_BASE_URL")) or DEFAULT_BASE_URL
        )
        url = url.rstrip("/")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise FastVMError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise FastVMError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        try:
            self._transport = H2Transport(url)
        except ValueError as err:
            raise FastVMError(str(err)) from None
        self.api_key = key
        self.base_url = url
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self._prefix = _url_path(url)
        user_agent = (
            f"fastvm-python/{__version__} {platform.python_implementation()}/"
            f"{platform.python_version()}"
        )
        self._headers: list[tuple[bytes, bytes]] = [
            (b"accept", b"application/json"),
            (b"user-agent", user_agent.encode()),
            (b"x-api-key", key.encode()),
        ]
        self._json_headers = self._headers + [(b"content-type", b"application/json")]

    def __repr__(self) -> str:
        return f"FastVM(base_url={self.base_url!r})"

    # Connection ---------------------------------------------------------------------------------

    async def warmup(self) -> None:
        """Opens the HTTP/2 connection now and checks the server (``GET /healthz``), so that
        later calls pay no handshake. ``async with`` calls it on entry."""
        deadline = self._deadline(None)
        await self._bounded(self._transport.connect(), deadline, "connect")
        await self._request("GET", "/healthz", deadline=deadline, idempotent=True)

    async def close(self) -> None:
        """Closes the connection. Calls still running fail; the client cannot be used again."""
        await self._transport.aclose()

    async def __aenter__(self) -> FastVM:
        await self.warmup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # VMs ----------------------------------------------------------------------------------------

    async def launch(
        self,
        *,
        machine: str = "c1m2",
        name: str | None = None,
        disk_gib: int | None = None,
        firewall: FirewallPolicy | None = None,
        timeout: float = 300.0,
    ) -> VM:
        """Launches a new microVM and waits until it is running.

        Args:
            machine: machine type ``c{vCPUs}m{GiB}``: ``c1m2``, ``c2m4``, ``c4m8`` or ``c8m16``.
            name: VM name; a UUID when omitted.
            disk_gib: disk size in GiB (default: the machine's, 10).
            firewall: public IPv6 ingress policy (default: restricted, no rules).
            timeout: seconds to wait until the VM is running.

        Raises:
            VMLaunchError: the VM ended in ``error``, ``stopped`` or ``deleting``.
            VMNotReadyError: it was not running within ``timeout``.
            QuotaExceededError: the organization's quota would be exceeded.
        """
        body: dict[str, Any] = {"machineType": machine, "name": _name_or_uuid(name)}
        if disk_gib is not None:
            body["diskGiB"] = disk_gib
        if firewall is not None:
            body["firewall"] = firewall_to_wire(firewall)
        return await self._create_vm(body, timeout)

    async def restore(
        self,
        snapshot: str | Snapshot,
        *,
        name: str | None = None,
        firewall: FirewallPolicy | None = None,
        timeout: float = 300.0,
    ) -> VM:
        """Restores a new VM from a snapshot and waits until it is running.

        The VM resumes with the snapshot's memory and disk: processes that ran when the snapshot
        was taken run on. It inherits the snapshot's machine type and firewall.

        Args:
            snapshot: snapshot id or name, or a :class:`Snapshot`.
            name: VM name; a UUID when omitted.
            firewall: overrides the snapshot's firewall policy.
            timeout: seconds to wait until the VM is running.

        Raises:
            VMLaunchError, VMNotReadyError, QuotaExceededError: as for :meth:`launch`.
        """
        body: dict[str, Any] = {
            "snapshotId": _ref(snapshot, Snapshot, "snapshot"),
            "name": _name_or_uuid(name),
        }
        if firewall is not None:
            body["firewall"] = firewall_to_wire(firewall)
        return await self._create_vm(body, timeout)

    async def get(self, vm: str | VM) -> VM:
        """Fetches the current state of a VM (by id, name or object).

        Raises:
            NotFoundError: there is no such VM.
        """
        return vm_from_wire(await self._call("GET", f"/v1/vms/{_seg(vm, VM, 'vm')}"))

    async def list(self) -> builtins.list[VM]:
        """Lists the organization's VMs."""
        data = await self._call("GET", "/v1/vms")
        return [vm_from_wire(v) for v in data] if isinstance(data, builtins.list) else []

    async def remove(self, vm: str | VM) -> None:
        """Deletes a VM (by id, name or object).

        Raises:
            NotFoundError: there is no such VM.
        """
        await self._call("DELETE", f"/v1/vms/{_seg(vm, VM, 'vm')}")

    async def rename(self, vm: str | VM, name: str) -> VM:
        """Renames a VM and returns it."""
        return vm_from_wire(
            await self._call("PATCH", f"/v1/vms/{_seg(vm, VM, 'vm')}", {"name": name})
        )

    async def set_firewall(self, vm: str | VM, policy: FirewallPolicy) -> VM:
        """Replaces the VM's public IPv6 ingress firewall policy and returns the VM."""
        path = f"/v1/vms/{_seg(vm, VM, 'vm')}/firewall"
        return vm_from_wire(await self._call("PUT", path, firewall_to_wire(policy)))

    async def patch_firewall(self, vm: str | VM, patch: PatchFirewallPolicy) -> VM:
        """Changes only the given parts of the VM's firewall (``mode`` and/or ``ingress``)."""
        path = f"/v1/vms/{_seg(vm, VM, 'vm')}/firewall"
        return vm_from_wire(await self._call("PATCH", path, patch_to_wire(patch)))

    # Commands -----------------------------------------------------------------------------------

    async def run(
        self,
        vm: str | VM,
        command: str | builtins.list[str],
        *,
        timeout_sec: int | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Runs a command in a VM and returns its exit code and output once it exits.

        A string runs through the shell (``sh -c``); a list is the exact argv. The command is
        bound to the call: when ``timeout`` passes (or the task is cancelled, or the connection
        drops) the request is reset and the server kills the command. Detach work that must
        outlive the call inside the VM (``nohup ... &``, ``tmux``). Never retried once sent.

        Args:
            vm: VM id or name, or a :class:`VM`.
            command: shell command string, or argv list.
            timeout_sec: server-side limit on the command's run time, in seconds.
            timeout: client-side limit on the call, in seconds (default: the client's timeout).

        Raises:
            APITimeoutError: ``timeout`` passed.
            ConflictError: the VM is not running.
        """
        if isinstance(command, str):
            argv = ["sh", "-c", command]
        else:
            argv = builtins.list(command)
            if not argv or not all(isinstance(a, str) for a in argv):
                raise FastVMError("run: command must be a string or a non-empty list of strings")
        body: dict[str, Any] = {"command": argv}
        if timeout_sec is not None:
            body["timeoutSec"] = timeout_sec
        data = await self._request(
            "POST",
            f"/v1/vms/{_seg(vm, VM, 'vm')}/exec",
            body,
            deadline=self._deadline(timeout),
            idempotent=False,
        )
        return command_result_from_wire(data)

    # Snapshots ----------------------------------------------------------------------------------

    async def snapshot(
        self,
        vm: str | VM,
        *,
        name: str = "",
        timeout: float = 300.0,
    ) -> Snapshot:
        """Snapshots a running VM (memory and disk; it keeps running) and waits until ready.

        Args:
            vm: VM id or name, or a :class:`VM`.
            name: snapshot name; a UUID when empty.
            timeout: seconds to wait until the snapshot is ready.

        Raises:
            SnapshotError: the snapshot ended in ``error``.
            SnapshotNotReadyError: it was not ready within ``timeout``.
            QuotaExceededError: the organization's snapshot quota is used up.
        """
        deadline = self._deadline(timeout)
        body = {"vmId": _ref(vm, VM, "vm"), "name": _name_or_uuid(name)}
        created = snapshot_from_wire(
            await self._request("POST", "/v1/snapshots", body, deadline=deadline, idempotent=False)
        )
        path = f"/v1/snapshots/{_seg(created.id, Snapshot, 'snapshot')}"
        return await self._wait(
            created,
            ready=_SNAPSHOT_READY,
            failed=_SNAPSHOT_FAILED,
            deadline=deadline,
            refresh=lambda: self._request("GET", path, deadline=deadline, idempotent=True),
            parse=snapshot_from_wire,
            on_failed=lambda s: SnapshotError(s.id, s.status),
            on_timeout=lambda s: SnapshotNotReadyError(s.id, s.status, timeout),
        )

    async def fork(
        self,
        snapshot: str | Snapshot,
        n: int,
        *,
        name_prefix: str | None = None,
        firewall: FirewallPolicy | None = None,
        timeout: float = 300.0,
    ) -> builtins.list[VM]:
        """Restores ``n`` VMs from a snapshot in one call and returns them, all running.

        An addition beyond the seed (``POST /v1/snapshots/{id}/fork``). All or nothing: if the
        quota cannot hold all ``n`` VMs none is started, and if one fails to start the server
        deletes the others. Never retried once the server has answered.

        Args:
            snapshot: snapshot id or name, or a :class:`Snapshot`.
            n: how many VMs, 1 to 100.
            name_prefix: VMs are named ``<name_prefix>-1`` … ``<name_prefix>-<n>`` (default: the
                snapshot's name).
            firewall: every fork's policy (default: the snapshot's).
            timeout: seconds to wait until all of them are running.

        Raises:
            QuotaExceededError: the quota cannot hold ``n`` more VMs (its ``body`` says how many
                would fit).
            NotFoundError: there is no such snapshot.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise FastVMError(f"n must be a positive integer, got {n!r}")
        body: dict[str, Any] = {"count": n}
        if name_prefix:
            body["namePrefix"] = name_prefix
        if firewall is not None:
            body["firewall"] = firewall_to_wire(firewall)
        path = f"/v1/snapshots/{_seg(snapshot, Snapshot, 'snapshot')}/fork"
        data = await self._request(
            "POST", path, body, deadline=self._deadline(timeout), idempotent=False
        )
        vms = data.get("vms") if isinstance(data, dict) else data
        return [vm_from_wire(v) for v in vms] if isinstance(vms, builtins.list) else []

    async def lineage(self, snapshot: str | Snapshot) -> Lineage:
        """A snapshot's lineage: the path from the VM it all started from down to the snapshot,
        and the tree of VMs and snapshots made from it (an addition beyond the seed).

        Deleted objects that link the tree appear with ``deleted=True`` and only their id.
        """
        path = f"/v1/snapshots/{_seg(snapshot, Snapshot, 'snapshot')}/lineage"
        return lineage_from_wire(await self._call("GET", path))

    async def list_snapshots(self) -> builtins.list[Snapshot]:
        """Lists the organization's snapshots."""
        data = await self._call("GET", "/v1/snapshots")
        return [snapshot_from_wire(s) for s in data] if isinstance(data, builtins.list) else []

    async def remove_snapshot(self, snapshot: str | Snapshot) -> None:
        """Deletes a snapshot (VMs restored from it are not affected)."""
        await self._call("DELETE", f"/v1/snapshots/{_seg(snapshot, Snapshot, 'snapshot')}")

    async def rename_snapshot(self, snapshot: str | Snapshot, name: str) -> Snapshot:
        """Renames a snapshot and returns it."""
        path = f"/v1/snapshots/{_seg(snapshot, Snapshot, 'snapshot')}"
        return snapshot_from_wire(await self._call("PATCH", path, {"name": name}))

    # Quotas -------------------------------------------------------------------------------------

    async def quotas(self) -> OrgQuotaUsage:
        """Fetches the organization's quota limits and current usage."""
        return quotas_from_wire(await self._call("GET", "/v1/org/quotas"))

    # Internals ----------------------------------------------------------------------------------

    async def _create_vm(self, body: dict[str, Any], timeout: float) -> VM:
        deadline = self._deadline(timeout)
        created = vm_from_wire(
            await self._request("POST", "/v1/vms", body, deadline=deadline, idempotent=False)
        )
        path = f"/v1/vms/{_seg(created.id, VM, 'vm')}"
        return await self._wait(
            created,
            ready=_VM_READY,
            failed=_VM_FAILED,
            deadline=deadline,
            refresh=lambda: self._request("GET", path, deadline=deadline, idempotent=True),
            parse=vm_from_wire,
            on_failed=lambda v: VMLaunchError(v.id, v.status),
            on_timeout=lambda v: VMNotReadyError(v.id, v.status, timeout),
        )

    async def _wait(
        self,
        current: _T,
        *,
        ready: frozenset[str],
        failed: frozenset[str],
        deadline: float,
        refresh: Callable[[], Awaitable[Any]],
        parse: Callable[[Any], _T],
        on_failed: Callable[[_T], FastVMError],
        on_timeout: Callable[[_T], FastVMError],
    ) -> _T:
        """Polls (100 ms, growing to 1 s) until the status is ready; raises when it failed."""
        delay = _POLL_FIRST
        while True:
            status = getattr(current, "status", "")
            if status in ready:
                return current
            if status in failed:
                raise on_failed(current)
            left = deadline - time.monotonic()
            if left <= 0:
                raise on_timeout(current)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, _POLL_MAX)
            if deadline - time.monotonic() <= 0:
                raise on_timeout(current)
            try:
                current = parse(await refresh())
            except APITimeoutError:
                raise on_timeout(current) from None

    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:
            timeout = self.timeout
        elif not (isinstance(timeout, (int, float)) and timeout > 0):
            raise FastVMError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return time.monotonic() + timeout

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        """An idempotent call (GET, PUT, PATCH, DELETE) bounded by the client's timeout."""
        return await self._request(
            method, path, body, deadline=self._deadline(None), idempotent=True
        )

    async def _bounded(self, awaitable: Awaitable[_T], deadline: float, what: str) -> _T:
        left = deadline - time.monotonic()
        if left <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise APITimeoutError(f"{what} timed out")
        try:
            return await _within(awaitable, left)
        except asyncio.TimeoutError:
            raise APITimeoutError(f"{what} timed out") from None

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        deadline: float,
        idempotent: bool,
    ) -> Any:
        """One API call with retries, within ``deadline``; returns the parsed JSON body.

        HTTP errors are retried (408, 409, 429, 5xx, and whatever the server marks with
        ``x-should-retry: true``; never what it marks ``false``) only for idempotent calls, or
        when the server says so. Connection failures are retried when the request was certainly
        not sent, or the call is idempotent.
        """
        content = None
        headers = self._headers
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers = self._json_headers
        full_path = self._prefix + path
        what = f"{method} {path}"
        retries = 0
        while True:
            try:
                raw = await self._bounded(
                    self._transport.request(method, full_path, headers, content), deadline, what
                )
            except APITimeoutError:
                raise
            except APIConnectionError as err:
                if retries < self.max_retries and (idempotent or not err.request_sent):
                    wait = _backoff(retries)
                    if wait < deadline - time.monotonic():
                        retries += 1
                        await asyncio.sleep(wait)
                        continue
                raise
            if 200 <= raw.status < 300:
                return _parse_body(raw)
            error = error_from_response(raw.status, _parse_body(raw), raw.header_dict())
            if retries < self.max_retries and _should_retry(raw, error, idempotent):
                after = _retry_after(raw)
                delay = _backoff(retries) if after is None else after
                if delay < deadline - time.monotonic():
                    retries += 1
                    await asyncio.sleep(delay)
                    continue
            raise error


# ------------------------------------------------------------------------------------------------
# Helpers


def _non_empty(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _url_path(url: str) -> str:
    """The base URL's path prefix (``http://h/fastvm`` → ``/fastvm``), without a trailing slash."""
    rest = url.split("://", 1)[-1]
    slash = rest.find("/")
    return rest[slash:].rstrip("/") if slash >= 0 else ""


def _name_or_uuid(name: str | None) -> str:
    return name if name else str(uuid.uuid4())


def _ref(value: object, cls: type, what: str) -> str:
    """The id of an object, or the id/name string itself."""
    ref = getattr(value, "id", None) if isinstance(value, cls) else value
    if not isinstance(ref, str) or ref == "":
        raise FastVMError(
            f"{what}: expected an id, a name or a {cls.__name__} object, got {value!r}"
        )
    return ref


def _seg(value: object, cls: type, what: str) -> str:
    """The id or name as one percent-encoded path segment."""
    ref = _ref(value, cls, what)
    if ref in (".", ".."):
        raise FastVMError(f"{what}: {ref!r} is not a valid id or name")
    return quote(ref, safe="")


def _parse_body(raw: RawResponse) -> Any:
    if not raw.body:
        return None
    text = raw.body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _should_retry(raw: RawResponse, error: APIError, idempotent: bool) -> bool:
    hint = raw.header("x-should-retry")
    if hint == "true":
        return True
    if hint == "false" or not idempotent or isinstance(error, QuotaExceededError):
        return False
    return raw.status in (408, 409, 429) or raw.status >= 500


def _retry_after(raw: RawResponse) -> float | None:
    """The server's requested delay in seconds (``retry-after-ms``, ``retry-after``), if sane."""
    delay: float | None = None
    ms = raw.header("retry-after-ms")
    if ms is not None:
        try:
            delay = float(ms) / 1000
        except ValueError:
            delay = None
    after = raw.header("retry-after")
    if delay is None and after is not None:
        try:
            delay = float(after)
        except ValueError:
            try:
                delay = email.utils.parsedate_to_datetime(after).timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                delay = None
    if delay is not None and 0 < delay <= 60:
        return delay
    return None


def _backoff(retries_taken: int) -> float:
    return float(min(0.5 * 2**retries_taken, 8.0) * (1 - random.random() * 0.25))

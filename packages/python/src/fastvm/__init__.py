"""FastVM: async Python SDK for FastVM microVMs.

Launch, snapshot, restore and run commands in microVMs over one multiplexed HTTP/2 connection::

    import asyncio
    from fastvm import FastVM

    async def main():
        async with FastVM() as client:
            vm = await client.launch(machine="c1m2")
            result = await client.run(vm, "echo hello")
            print(result.stdout)  # hello

    asyncio.run(main())
"""

from ._client import DEFAULT_BASE_URL, FastVM
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FastVMError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    SnapshotError,
    SnapshotNotReadyError,
    UnprocessableEntityError,
    VMLaunchError,
    VMNotReadyError,
)
from ._models import (
    VM,
    CommandResult,
    FirewallPolicy,
    FirewallRule,
    Lineage,
    LineageNode,
    OrgQuotaUsage,
    OrgQuotaValues,
    PatchFirewallPolicy,
    Snapshot,
)
from ._version import __version__

__all__ = [
    "FastVM",
    "DEFAULT_BASE_URL",
    "VM",
    "Snapshot",
    "Lineage",
    "LineageNode",
    "CommandResult",
    "FirewallPolicy",
    "FirewallRule",
    "PatchFirewallPolicy",
    "OrgQuotaUsage",
    "OrgQuotaValues",
    "FastVMError",
    "APIConnectionError",
    "APITimeoutError",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "UnprocessableEntityError",
    "RateLimitError",
    "QuotaExceededError",
    "InternalServerError",
    "VMLaunchError",
    "VMNotReadyError",
    "SnapshotError",
    "SnapshotNotReadyError",
    "__version__",
]

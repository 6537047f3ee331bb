"""Data classes returned and accepted by the client, and their wire (camelCase JSON) forms.

Reading is tolerant: unknown fields are ignored and missing optional ones get neutral values, so
a newer server never breaks an older client. Writing omits unset optional fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
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
]


@dataclass
class FirewallRule:
    """One ingress allow rule of a ``restricted`` firewall policy.

    Attributes:
        protocol: ``"tcp"`` or ``"udp"``.
        port_start: first port of the range.
        port_end: last port (inclusive); ``None`` for the single port ``port_start``.
        source_cidrs: IPv6 CIDRs allowed to connect; empty means any source.
        description: free text.
    """

    protocol: str
    port_start: int
    port_end: int | None = None
    source_cidrs: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class FirewallPolicy:
    """Public IPv6 ingress firewall of a VM.

    Attributes:
        mode: ``"open"`` (all inbound traffic allowed) or ``"restricted"`` (only ``ingress``).
        ingress: allow rules, used in ``restricted`` mode.
    """

    mode: str
    ingress: list[FirewallRule] = field(default_factory=list)


@dataclass
class PatchFirewallPolicy:
    """A partial firewall update: fields left ``None`` are unchanged (``ingress=[]`` clears)."""

    mode: str | None = None
    ingress: list[FirewallRule] | None = None


@dataclass
class VM:
    """A microVM.

    Attributes:
        id: unique identifier.
        name: the VM's name.
        org_id: organization that owns it.
        machine_name: machine type (``c1m2``, ``c2m4``, ``c4m8``, ``c8m16``).
        cpu: vCPUs.
        memory_mib: memory in MiB.
        disk_gib: disk in GiB.
        status: ``provisioning``, ``running``, ``stopped``, ``deleting`` or ``error``.
        created_at: ISO 8601 creation time.
        source_name: the snapshot (or image) it was created from; empty for a fresh launch.
        public_ipv6: its public IPv6 address, if it has one.
        firewall: its firewall policy, if one is set.
        deleted_at: deletion time, or ``None``.
        source_snapshot_id: lineage: the snapshot it was restored or forked from; ``None`` for
            a fresh launch (an addition beyond the seed).
    """

    id: str
    name: str
    org_id: str
    machine_name: str
    cpu: int
    memory_mib: int
    disk_gib: int
    status: str
    created_at: str
    source_name: str = ""
    public_ipv6: str | None = None
    firewall: FirewallPolicy | None = None
    deleted_at: str | None = None
    source_snapshot_id: str | None = None


@dataclass
class Snapshot:
    """A snapshot of a VM (memory and disk), from which VMs are restored.

    Attributes:
        id: unique identifier.
        name: the snapshot's name.
        org_id: organization that owns it.
        vm_id: the VM it was taken from.
        status: ``creating``, ``ready`` or ``error``.
        created_at: ISO 8601 creation time.
        firewall: the source VM's firewall policy, inherited by restores.
        parent_snapshot_id: lineage: the snapshot its VM was restored from; ``None`` when that VM
            was a fresh launch. Kept when that snapshot is deleted (an addition beyond the seed).
        digests: ``{"memory", "disk", "state"}`` → ``"sha256:<hex>"`` of the snapshot's own layer
            files, once the server has computed them (shortly after ``ready``); empty until then.
    """

    id: str
    name: str
    org_id: str
    vm_id: str
    status: str
    created_at: str
    firewall: FirewallPolicy | None = None
    parent_snapshot_id: str | None = None
    digests: dict[str, str] = field(default_factory=dict)


@dataclass
class LineageNode:
    """One snapshot or VM of a :class:`Lineage`.

    Attributes:
        type: ``"snapshot"`` or ``"vm"``.
        id: its id.
        deleted: it was deleted; only ``id`` is known (it is kept because it links the tree).
        name: its name (empty when deleted).
        status: its status (empty when deleted).
        children: a snapshot's: the VMs restored from it; a VM's: the snapshots taken of it.
    """

    type: str
    id: str
    deleted: bool = False
    name: str = ""
    status: str = ""
    children: list[LineageNode] = field(default_factory=list)


@dataclass
class Lineage:
    """A snapshot's lineage, from :meth:`FastVM.lineage`.

    Attributes:
        ancestors: from the root (the freshly launched VM) down to the snapshot itself (last).
        descendants: the VMs restored from the snapshot, with everything below them.
        truncated: the server cut the tree short.
    """

    ancestors: list[LineageNode] = field(default_factory=list)
    descendants: list[LineageNode] = field(default_factory=list)
    truncated: bool = False


@dataclass
class CommandResult:
    """The outcome of :meth:`FastVM.run`.

    Attributes:
        exit_code: the process's exit code.
        stdout: standard output (UTF-8 text, at most 4 MiB).
        stderr: standard error (UTF-8 text, at most 4 MiB).
        timed_out: whether the server-side ``timeout_sec`` killed the command.
        stdout_truncated: whether stdout was cut at the cap.
        stderr_truncated: whether stderr was cut at the cap.
        duration_ms: run time in milliseconds.
    """

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int


@dataclass
class OrgQuotaValues:
    """Amounts of each quota dimension (limits or usage)."""

    vcpu: int
    memory_mib: int
    disk_gib: int
    snapshot_count: int


@dataclass
class OrgQuotaUsage:
    """The organization's quota limits and current usage."""

    org_id: str
    limits: OrgQuotaValues
    usage: OrgQuotaValues


# ------------------------------------------------------------------------------------------------
# Wire conversion (internal)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return int(value)
    return 0


def _bool(value: Any) -> bool:
    return value is True


def rule_from_wire(value: Any) -> FirewallRule:
    r = _obj(value)
    port_end = r.get("portEnd")
    cidrs = r.get("sourceCidrs")
    return FirewallRule(
        protocol=_str(r.get("protocol")),
        port_start=_int(r.get("portStart")),
        port_end=port_end if isinstance(port_end, int) and not isinstance(port_end, bool) else None,
        source_cidrs=[c for c in cidrs if isinstance(c, str)] if isinstance(cidrs, list) else [],
        description=_str(r.get("description")),
    )


def firewall_from_wire(value: Any) -> FirewallPolicy | None:
    if not isinstance(value, dict):
        return None
    ingress = value.get("ingress")
    return FirewallPolicy(
        mode=_str(value.get("mode")),
        ingress=[rule_from_wire(r) for r in ingress] if isinstance(ingress, list) else [],
    )


def rule_to_wire(rule: FirewallRule) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": rule.protocol, "portStart": rule.port_start}
    if rule.port_end is not None:
        out["portEnd"] = rule.port_end
    if rule.source_cidrs:
        out["sourceCidrs"] = list(rule.source_cidrs)
    if rule.description:
        out["description"] = rule.description
    return out


def firewall_to_wire(policy: FirewallPolicy) -> dict[str, Any]:
    return {"mode": policy.mode, "ingress": [rule_to_wire(r) for r in policy.ingress]}


def patch_to_wire(patch: PatchFirewallPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if patch.mode is not None:
        out["mode"] = patch.mode
    if patch.ingress is not None:
        out["ingress"] = [rule_to_wire(r) for r in patch.ingress]
    return out


def vm_from_wire(value: Any) -> VM:
    v = _obj(value)
    return VM(
        id=_str(v.get("id")),
        name=_str(v.get("name")),
        org_id=_str(v.get("orgId")),
        machine_name=_str(v.get("machineName")),
        cpu=_int(v.get("cpu")),
        memory_mib=_int(v.get("memoryMiB")),
        disk_gib=_int(v.get("diskGiB")),
        status=_str(v.get("status")),
        created_at=_str(v.get("createdAt")),
        source_name=_str(v.get("sourceName")),
        public_ipv6=_opt_str(v.get("publicIpv6")),
        firewall=firewall_from_wire(v.get("firewall")),
        deleted_at=_opt_str(v.get("deletedAt")),
        source_snapshot_id=_opt_str(v.get("sourceSnapshotId")),
    )


def snapshot_from_wire(value: Any) -> Snapshot:
    s = _obj(value)
    return Snapshot(
        id=_str(s.get("id")),
        name=_str(s.get("name")),
        org_id=_str(s.get("orgId")),
        vm_id=_str(s.get("vmId")),
        status=_str(s.get("status")),
        created_at=_str(s.get("createdAt")),
        firewall=firewall_from_wire(s.get("firewall")),
        parent_snapshot_id=_opt_str(s.get("parentSnapshotId")),
        digests={k: d for k, d in _obj(s.get("digests")).items() if isinstance(d, str)},
    )


def lineage_node_from_wire(value: Any) -> LineageNode:
    n = _obj(value)
    return LineageNode(
        type=_str(n.get("type")),
        id=_str(n.get("id")),
        deleted=n.get("deleted") is True,
        name=_str(n.get("name")),
        status=_str(n.get("status")),
        children=_nodes(n.get("children")),
    )


def lineage_from_wire(value: Any) -> Lineage:
    w = _obj(value)
    return Lineage(
        ancestors=_nodes(w.get("ancestors")),
        descendants=_nodes(w.get("descendants")),
        truncated=w.get("truncated") is True,
    )


def _nodes(value: Any) -> list[LineageNode]:
    return [lineage_node_from_wire(n) for n in value] if isinstance(value, list) else []


def command_result_from_wire(value: Any) -> CommandResult:
    r = _obj(value)
    return CommandResult(
        exit_code=_int(r.get("exitCode")),
        stdout=_str(r.get("stdout")),
        stderr=_str(r.get("stderr")),
        timed_out=_bool(r.get("timedOut")),
        stdout_truncated=_bool(r.get("stdoutTruncated")),
        stderr_truncated=_bool(r.get("stderrTruncated")),
        duration_ms=_int(r.get("durationMs")),
    )


def quota_values_from_wire(value: Any) -> OrgQuotaValues:
    q = _obj(value)
    return OrgQuotaValues(
        vcpu=_int(q.get("vcpu")),
        memory_mib=_int(q.get("memoryMiB")),
        disk_gib=_int(q.get("diskGiB")),
        snapshot_count=_int(q.get("snapshotCount")),
    )


def quotas_from_wire(value: Any) -> OrgQuotaUsage:
    q = _obj(value)
    return OrgQuotaUsage(
        org_id=_str(q.get("orgId")),
        limits=quota_values_from_wire(q.get("limits")),
        usage=quota_values_from_wire(q.get("usage")),
    )

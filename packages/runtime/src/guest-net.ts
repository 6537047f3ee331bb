/**
 * The network configuration every guest keeps for its whole life: one MAC, one private IPv6 and
 * one private IPv4 address, and a gateway with a fixed MAC, the same in every VM. It is set once,
 * when a machine type's golden snapshot is built, so every VM — launched, restored or forked —
 * wakes up already configured and a restore needs no network work in the guest at all.
 *
 * The host makes each VM unique from the outside: each VM's tap is its own routed link, and the
 * tap's nftables table translates the guest's private addresses to the VM's public IPv6 and its
 * IPv4 from the host's NAT subnet (and back), statelessly. See `network.ts`.
 * @module
 */

/** Bumped when the guest's configuration below changes (recorded on snapshots as `guestNet`). */
export const GUEST_NET_VERSION = 1;

export const GUEST_NET = {
  /** The guest's NIC. */
  mac: '02:fc:00:00:00:02',
  /** Every tap's MAC: the guest's gateway, in its neighbour table for good (`nud permanent`). */
  gatewayMac: '02:fc:00:00:00:01',
  /** Private IPv6 of every guest (a ULA only the guest sees) and its prefix length. */
  ipv6: 'fd00:fc::2',
  ipv6Len: 64,
  /** The IPv6 gateway: a link-local address every tap has. */
  ipv6Gateway: 'fe80::1',
  /** Private IPv4 of every guest, a /32 with a link route to its gateway. */
  ipv4: '10.0.2.15',
  ipv4Gateway: '10.0.2.2',
} as const;

/** The `net` and `route` lines of the agent's IDENTITY that give a guest this configuration. */
export function guestNetIdentity(): { net: string[]; routes: string[] } {
  const g = GUEST_NET;
  return {
    net: [`eth0 ${g.mac} ${g.ipv6}/${g.ipv6Len} ${g.ipv4}/32`],
    routes: [
      `${g.ipv4Gateway}/32 dev eth0`,
      `default via ${g.ipv4Gateway} dev eth0`,
      `-6 default via ${g.ipv6Gateway} dev eth0`,
    ],
  };
}

/**
 * Shell commands that pin the gateway's MAC in the guest's neighbour table, so the guest never
 * asks for it (the host owns no address for IPv4's gateway, and answers nothing), and make the
 * gateway the guest's resolver: the host translates `10.0.2.2:53` to the server's DNS
 * forwarder, which applies the VM's DNS policy and learns the addresses of its FQDN rules.
 */
export const GUEST_NEIGH_SCRIPT =
  `ip neigh replace ${GUEST_NET.ipv4Gateway} lladdr ${GUEST_NET.gatewayMac} dev eth0 nud permanent && ` +
  `ip -6 neigh replace ${GUEST_NET.ipv6Gateway} lladdr ${GUEST_NET.gatewayMac} dev eth0 nud permanent && ` +
  `rm -f /etc/resolv.conf && ` +
  `printf 'nameserver ${GUEST_NET.ipv4Gateway}\noptions timeout:2 attempts:2\n' > /etc/resolv.conf`;

/** Runs `GUEST_NEIGH_SCRIPT` in the guest. */
export async function pinGatewayMac(agent: {
  exec(req: { argv: string[]; timeoutMs?: number }): Promise<{ exitCode: number; stderr: Buffer }>;
}): Promise<void> {
  const r = await agent.exec({ argv: ['sh', '-c', GUEST_NEIGH_SCRIPT], timeoutMs: 30_000 });
  if (r.exitCode !== 0) {
    throw new Error(`pinning the gateway's MAC in the guest failed: ${r.stderr.toString().trim()}`);
  }
}

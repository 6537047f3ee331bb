/**
 * Taps handed to a confined QEMU by descriptor. QEMU's user cannot open `/dev/net/tun` (root-only
 * on many hosts) and must not be able to attach to taps at all, so the server's helper
 * `fastvm-tapfd` (native/tapfd.c, run as root) opens the tap and hands QEMU the descriptor:
 * - at start: the helper (helper.ts) starts QEMU with the tap open as descriptor 3, as QEMU's
 *   user (`-netdev tap,fd=3`);
 * - later (a pool VM taken, a restore whose network came late): the helper passes the descriptor
 *   over a second QMP monitor of QEMU's (`plug.sock`, `getfd`) and adds the netdevs there: a
 *   descriptor named with `getfd` belongs to the monitor that received it.
 * Unconfined QEMU (root) and VMs started without the monitor open their taps by name, as before.
 * See docs/ARCHITECTURE.md ("Confinement").
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import type { TapfdHelper } from './helper.js';
import { HUB_NET } from './qemu.js';
import type { QmpClient } from './qmp.js';

/** QEMU's second monitor, in its VM dir: only `fastvm-tapfd plug` talks to it. */
export const PLUG_SOCKET = 'plug.sock';
/** The descriptor a tap is handed over on at start. */
export const TAP_FD = 3;
const { hub: HUB, tap: TAP_NETDEV, port: HUB_PORT } = HUB_NET;

/**
 * Plugs `tap` into the NIC's hub of the running QEMU whose VM dir is `dir`: by descriptor through
 * the helper when that QEMU has the plug monitor, else by name over QMP (QEMU opens it itself).
 */
export async function plugTap(
  qmp: QmpClient,
  dir: string,
  tap: string,
  helper: TapfdHelper | undefined,
): Promise<void> {
  const socket = path.join(dir, PLUG_SOCKET);
  if (helper && fs.existsSync(socket)) {
    await helper.plug(socket, tap, HUB_NET);
    return;
  }
  // Both at once: QMP runs a monitor's commands in order, so the hub port is added after the tap
  // (one round trip instead of two). A failed tap's error is the one reported.
  const tapAdded = qmp.execute('netdev_add', {
    type: 'tap',
    id: TAP_NETDEV,
    ifname: tap,
    script: 'no',
    downscript: 'no',
  });
  const portAdded = qmp.execute('netdev_add', {
    type: 'hubport',
    id: HUB_PORT,
    hubid: HUB,
    netdev: TAP_NETDEV,
  });
  portAdded.catch(() => {});
  await tapAdded;
  await portAdded;
}

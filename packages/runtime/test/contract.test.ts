/** The runtime contract (`@fastvm/runtime/testing`) against the real QemuRuntime (real VMs). */
import { runtimeContract } from '../testing/contract.js';
import { createQemuRuntime, type QemuRuntime } from '../src/runtime.js';
import { disposeRuntime, testRuntime } from './helpers.js';

runtimeContract('QemuRuntime', {
  start: () => testRuntime(),
  async restart(rt) {
    const { dataDir } = rt as QemuRuntime;
    await rt.detach();
    return createQemuRuntime({ dataDir });
  },
  dispose: (rt) => disposeRuntime(rt as QemuRuntime),
});

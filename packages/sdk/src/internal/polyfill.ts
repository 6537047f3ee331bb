// `await using client = new FastVM()` needs Symbol.asyncDispose. Node 20.4+ defines it; older
// runtimes get a registered symbol, which is also what TypeScript's downlevel helpers look up.
const symbols = Symbol as unknown as { asyncDispose?: symbol; dispose?: symbol };
symbols.asyncDispose ??= Symbol.for('Symbol.asyncDispose');
symbols.dispose ??= Symbol.for('Symbol.dispose');

export {};

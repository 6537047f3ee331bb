/**
 * Sample collection and summaries for the benchmarks.
 */

export type Unit = 'ms' | 'MiB' | 'req/s' | 'MiB/s' | 'ratio' | 'count' | '%';

/** One scenario in `latest.json`: exactly these fields (the contract). */
export interface ScenarioResult {
  unit: Unit;
  p50: number;
  p90: number;
  max: number;
  samples: number;
}

/** Extra figures of a scenario, kept beside the contract fields in `details`. */
export interface ScenarioDetail {
  min: number;
  mean: number;
  p99: number;
  note?: string;
  /** The samples in the order taken (series of at most 50 samples only). */
  values?: number[];
}

/** Linear-interpolated quantile of an ascending array (q in [0, 1]). */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo]!;
  const b = sorted[hi]!;
  return a + (b - a) * (pos - lo);
}

/** Rounds to a precision that suits the magnitude (3 significant digits, at least 0.01). */
export function round(v: number): number {
  if (!Number.isFinite(v)) return v;
  const abs = Math.abs(v);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

export function summarize(
  values: readonly number[],
  unit: Unit,
): { result: ScenarioResult; detail: ScenarioDetail } {
  const s = [...values].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return {
    result: {
      unit,
      p50: round(quantile(s, 0.5)),
      p90: round(quantile(s, 0.9)),
      max: round(s[s.length - 1] ?? NaN),
      samples: s.length,
    },
    detail: {
      min: round(s[0] ?? NaN),
      mean: round(mean),
      p99: round(quantile(s, 0.99)),
    },
  };
}

/** Collects samples per scenario name, in the order scenarios were first recorded. */
export class Recorder {
  readonly #samples = new Map<string, { unit: Unit; values: number[] }>();
  readonly #notes = new Map<string, string>();
  readonly #phases = new Map<string, Map<string, number[]>>();

  add(name: string, unit: Unit, value: number): void {
    let s = this.#samples.get(name);
    if (!s) {
      s = { unit, values: [] };
      this.#samples.set(name, s);
    }
    if (s.unit !== unit) throw new Error(`scenario ${name}: unit ${unit} != ${s.unit}`);
    s.values.push(value);
  }

  note(name: string, text: string): void {
    this.#notes.set(name, text);
  }

  /** Records one sample's phase breakdown (e.g. the runtime's restore phases). */
  addPhases(name: string, phases: Readonly<Record<string, number>>): void {
    let m = this.#phases.get(name);
    if (!m) {
      m = new Map();
      this.#phases.set(name, m);
    }
    for (const [k, v] of Object.entries(phases)) {
      const arr = m.get(k) ?? [];
      arr.push(v);
      m.set(k, arr);
    }
  }

  has(name: string): boolean {
    return (this.#samples.get(name)?.values.length ?? 0) > 0;
  }

  values(name: string): readonly number[] {
    return this.#samples.get(name)?.values ?? [];
  }

  p50(name: string): number {
    return quantile(
      [...this.values(name)].sort((a, b) => a - b),
      0.5,
    );
  }

  scenarios(): {
    scenarios: Record<string, ScenarioResult>;
    details: Record<string, ScenarioDetail>;
  } {
    const scenarios: Record<string, ScenarioResult> = {};
    const details: Record<string, ScenarioDetail> = {};
    for (const [name, s] of this.#samples) {
      if (s.values.length === 0) continue;
      const { result, detail } = summarize(s.values, s.unit);
      scenarios[name] = result;
      const note = this.#notes.get(name);
      details[name] = {
        ...detail,
        ...(note ? { note } : {}),
        ...(s.values.length <= 50 ? { values: s.values.map(round) } : {}),
      };
    }
    return { scenarios, details };
  }

  /** p50 of each phase, per scenario. */
  phases(): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const [name, m] of this.#phases) {
      out[name] = {};
      for (const [k, v] of m) {
        out[name][k] = round(
          quantile(
            [...v].sort((a, b) => a - b),
            0.5,
          ),
        );
      }
    }
    return out;
  }
}

/**
 * Dockerfile parsing (pure: no I/O). `parseDockerfile` turns the text into instructions with
 * their line numbers (continuations joined, comments dropped, parser directives read);
 * `planStages` groups them into stages and picks the ones a target needs; `expandWord(s)` do
 * Docker's variable substitution (`$V`, `${V}`, `${V:-x}`, `${V:+x}`, `${V-x}`, `${V+x}`) with
 * shell-like quoting. Every refusal is a `DockerfileError` naming the line.
 * @module
 */

/** A refusal; `message` starts with `Dockerfile line N:` when a line is known. */
export class DockerfileError extends Error {
  constructor(
    readonly line: number,
    /** The message without its `Dockerfile line N:` prefix. */
    readonly detail: string,
  ) {
    super(line > 0 ? `Dockerfile line ${line}: ${detail}` : `Dockerfile: ${detail}`);
    this.name = 'DockerfileError';
  }
}

/** One instruction as written (flags split off, arguments not yet substituted). */
export interface Instruction {
  /** 1-based line where the instruction starts. */
  readonly line: number;
  /** Upper-case keyword (`RUN`, `COPY`, …). */
  readonly keyword: string;
  /** Leading `--name=value` flags (`--from`, `--chown`, `--chmod`, `--platform`). */
  readonly flags: Readonly<Record<string, string>>;
  /** The arguments after the flags, continuations joined. */
  readonly args: string;
  /** The JSON (exec) form's array, when the arguments are one. */
  readonly json?: readonly string[];
}

export interface ParsedDockerfile {
  readonly escape: '\\' | '`';
  readonly syntax?: string;
  readonly instructions: readonly Instruction[];
}

/** Instructions this builder executes or records. */
const SUPPORTED = new Set([
  'FROM',
  'RUN',
  'COPY',
  'ADD',
  'ENV',
  'ARG',
  'WORKDIR',
  'USER',
  'SHELL',
  'LABEL',
  'EXPOSE',
  'CMD',
  'ENTRYPOINT',
  'MAINTAINER',
]);
/** Real Dockerfile instructions this builder refuses (the build fails naming the line). */
const UNSUPPORTED = new Set(['HEALTHCHECK', 'VOLUME', 'ONBUILD', 'STOPSIGNAL']);
/** Flags each instruction accepts. */
const FLAGS: Readonly<Record<string, readonly string[]>> = {
  FROM: ['platform'],
  COPY: ['from', 'chown', 'chmod', 'link', 'parents'],
  ADD: ['chown', 'chmod', 'link'],
  RUN: [],
};

/** Parses a Dockerfile; throws `DockerfileError`. */
export function parseDockerfile(text: string): ParsedDockerfile {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  let escape: '\\' | '`' = '\\';
  let syntax: string | undefined;
  let i = 0;
  // Parser directives: `# key=value` lines at the very top.
  const seen = new Set<string>();
  for (; i < lines.length; i++) {
    const m = /^\s*#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$/.exec(lines[i]!);
    if (!m) break;
    const key = m[1]!.toLowerCase();
    if (key !== 'escape' && key !== 'syntax' && key !== 'check') break;
    if (seen.has(key)) throw new DockerfileError(i + 1, `parser directive ${key} given twice`);
    seen.add(key);
    if (key === 'escape') {
      if (m[2] !== '\\' && m[2] !== '`') {
        throw new DockerfileError(i + 1, `invalid escape character ${JSON.stringify(m[2])}`);
      }
      escape = m[2];
    } else if (key === 'syntax') {
      syntax = m[2];
    }
  }

  const instructions: Instruction[] = [];
  while (i < lines.length) {
    const raw = lines[i]!;
    if (/^\s*(#.*)?$/.test(raw)) {
      i++;
      continue;
    }
    const start = i + 1;
    let logical = '';
    let line = raw;
    for (;;) {
      const trimmed = line.replace(/\s+$/, '');
      if (trimmed.endsWith(escape) && !trimmed.endsWith(escape + escape)) {
        logical += trimmed.slice(0, -1);
        i++;
        // Comment lines inside a continuation are dropped; empty ones too.
        while (i < lines.length && /^\s*(#.*)?$/.test(lines[i]!)) i++;
        if (i >= lines.length) break;
        line = lines[i]!;
        continue;
      }
      logical += line;
      i++;
      break;
    }
    instructions.push(parseInstruction(start, logical.trim()));
  }
  if (instructions.length === 0) throw new DockerfileError(0, 'the Dockerfile has no instructions');
  const first = instructions.find((x) => x.keyword !== 'ARG');
  if (first?.keyword !== 'FROM') {
    throw new DockerfileError(
      first?.line ?? instructions[0]!.line,
      `the first instruction must be FROM (ARG may come before it), found ${first?.keyword ?? 'none'}`,
    );
  }
  return { escape, ...(syntax !== undefined ? { syntax } : {}), instructions };
}

function parseInstruction(line: number, text: string): Instruction {
  const m = /^(\S+)\s*([\s\S]*)$/.exec(text)!;
  const keyword = m[1]!.toUpperCase();
  let rest = m[2]!;
  if (UNSUPPORTED.has(keyword)) {
    throw new DockerfileError(line, `${keyword} is not supported by this builder`);
  }
  if (!SUPPORTED.has(keyword)) {
    throw new DockerfileError(line, `unknown instruction ${JSON.stringify(m[1])}`);
  }
  const flags: Record<string, string> = {};
  const allowed = FLAGS[keyword];
  if (allowed) {
    for (;;) {
      const f = /^--([A-Za-z][A-Za-z0-9-]*)(?:=(\S*))?(?:\s+|$)/.exec(rest);
      if (!f) break;
      const name = f[1]!.toLowerCase();
      if (!allowed.includes(name)) {
        throw new DockerfileError(line, `${keyword} --${name} is not supported by this builder`);
      }
      if (name === 'link' || name === 'parents') {
        if (name === 'parents') {
          throw new DockerfileError(line, `${keyword} --parents is not supported by this builder`);
        }
      } else if (f[2] === undefined || f[2] === '') {
        throw new DockerfileError(line, `${keyword} --${name} needs a value (--${name}=…)`);
      }
      flags[name] = f[2] ?? 'true';
      rest = rest.slice(f[0].length);
    }
  }
  const args = rest.trim();
  let json: string[] | undefined;
  if (args.startsWith('[')) {
    try {
      const v: unknown = JSON.parse(args);
      if (Array.isArray(v) && v.every((x) => typeof x === 'string')) json = v as string[];
    } catch {
      /* not JSON: the shell form */
    }
  }
  if (args === '' && keyword !== 'CMD' && keyword !== 'ENTRYPOINT') {
    throw new DockerfileError(line, `${keyword} needs arguments`);
  }
  if (
    (keyword === 'RUN' || keyword === 'COPY' || keyword === 'ADD') &&
    json === undefined &&
    /<<-?\s*["']?[A-Za-z_][A-Za-z0-9_]*["']?/.test(args)
  ) {
    throw new DockerfileError(
      line,
      `${keyword} with a heredoc (<<) is not supported by this builder`,
    );
  }
  if (keyword === 'SHELL' && (json === undefined || json.length === 0)) {
    throw new DockerfileError(line, 'SHELL needs a JSON array, e.g. SHELL ["/bin/bash", "-c"]');
  }
  return { line, keyword, flags, args, ...(json !== undefined ? { json } : {}) };
}

// ---- variable substitution ------------------------------------------------------------------

export type Vars = ReadonlyMap<string, string>;

/**
 * Splits `text` into words with quote removal and variable substitution (Docker's shell-word
 * rules: single quotes literal, double quotes substitute, the escape character escapes).
 */
export function expandWords(text: string, vars: Vars, escape = '\\', line = 0): string[] {
  return lex(text, vars, escape, line, true);
}

/** One word: quotes removed, variables substituted, whitespace kept. */
export function expandWord(text: string, vars: Vars, escape = '\\', line = 0): string {
  return lex(text, vars, escape, line, false).join('');
}

function lex(text: string, vars: Vars, escape: string, line: number, split: boolean): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  let i = 0;
  const n = text.length;
  const variable = (): string => {
    // text[i] === '$'
    i++;
    if (text[i] === '{') {
      const close = findClose(text, i + 1);
      if (close < 0) throw new DockerfileError(line, `missing } in ${JSON.stringify(text)}`);
      const body = text.slice(i + 1, close);
      i = close + 1;
      const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([\s\S]*))?$/.exec(body);
      if (!m) throw new DockerfileError(line, `bad substitution \${${body}}`);
      const name = m[1]!;
      const op = m[2];
      const value = vars.get(name);
      if (op === undefined) return value ?? '';
      const word = expandWord(m[3] ?? '', vars, escape, line);
      const set = op.startsWith(':') ? value !== undefined && value !== '' : value !== undefined;
      if (op.endsWith('-')) return set ? value! : word;
      return set ? word : '';
    }
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i));
    if (!m) return '$';
    i += m[0].length;
    return vars.get(m[0]) ?? '';
  };
  while (i < n) {
    const c = text[i]!;
    if (split && /\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
      i++;
      continue;
    }
    inWord = true;
    if (c === escape) {
      if (i + 1 < n) cur += text[i + 1];
      i += 2;
    } else if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) throw new DockerfileError(line, `unmatched ' in ${JSON.stringify(text)}`);
      cur += text.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      i++;
      for (;;) {
        if (i >= n) throw new DockerfileError(line, `unmatched " in ${JSON.stringify(text)}`);
        const d = text[i]!;
        if (d === '"') {
          i++;
          break;
        }
        if (d === escape && i + 1 < n) {
          const next = text[i + 1]!;
          // Inside double quotes the escape only escapes ", $, the escape itself.
          cur += next === '"' || next === '$' || next === escape ? next : d + next;
          i += 2;
        } else if (d === '$') {
          cur += variable();
        } else {
          cur += d;
          i++;
        }
      }
    } else if (c === '$') {
      cur += variable();
    } else {
      cur += c;
      i++;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

function findClose(text: string, from: number): number {
  let depth = 1;
  for (let j = from; j < text.length; j++) {
    if (text[j] === '{') depth++;
    else if (text[j] === '}' && --depth === 0) return j;
  }
  return -1;
}

/** `KEY=VALUE …` pairs (ENV, LABEL, ARG), or ENV's legacy `KEY VALUE` form. */
export function keyValues(
  ins: Instruction,
  vars: Vars,
  escape: string,
  opts: { legacy?: boolean; allowBare?: boolean } = {},
): Array<[string, string | undefined]> {
  const firstWord = /^\S+/.exec(ins.args)?.[0] ?? '';
  if (opts.legacy && !firstWord.includes('=')) {
    const rest = ins.args.slice(firstWord.length).trim();
    if (rest === '')
      throw new DockerfileError(ins.line, `${ins.keyword} ${firstWord} needs a value`);
    return [[firstWord, expandWord(rest, vars, escape, ins.line)]];
  }
  const out: Array<[string, string | undefined]> = [];
  for (const word of expandWords(ins.args, vars, escape, ins.line)) {
    const eq = word.indexOf('=');
    if (eq < 0) {
      if (!opts.allowBare) {
        throw new DockerfileError(
          ins.line,
          `${ins.keyword} expects KEY=VALUE, got ${JSON.stringify(word)}`,
        );
      }
      out.push([word, undefined]);
      continue;
    }
    const key = word.slice(0, eq);
    if (key === '') throw new DockerfileError(ins.line, `${ins.keyword} has an empty name`);
    out.push([key, word.slice(eq + 1)]);
  }
  return out;
}

// ---- stages -----------------------------------------------------------------------------------

export interface Stage {
  /** Position among all stages (0-based). */
  readonly index: number;
  /** `AS name`, lower-case, if given. */
  readonly name?: string;
  readonly from: Instruction;
  /** The FROM image after substitution of the global ARGs. */
  readonly image: string;
  readonly platform?: string;
  /** Instructions after the FROM. */
  readonly body: readonly Instruction[];
}

export interface StagePlan {
  readonly stages: readonly Stage[];
  /** Indexes of the stages to build, in dependency order; the last is the target. */
  readonly order: readonly number[];
  /** ARGs declared before the first FROM, with build-arg overrides applied. */
  readonly globalArgs: ReadonlyMap<string, string>;
}

/** Groups instructions into stages, substitutes FROM lines and orders what `target` needs. */
export function planStages(
  parsed: ParsedDockerfile,
  opts: { buildArgs?: Readonly<Record<string, string>>; target?: string } = {},
): StagePlan {
  const buildArgs = opts.buildArgs ?? {};
  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  let current: { from: Instruction; body: Instruction[] } | undefined;
  const finish = (): void => {
    if (!current) return;
    const words = expandWords(current.from.args, globalArgs, parsed.escape, current.from.line);
    let name: string | undefined;
    if (words.length === 3 && words[1]!.toUpperCase() === 'AS') {
      name = words[2]!.toLowerCase();
      if (!/^[a-z][a-z0-9._-]*$/.test(name)) {
        throw new DockerfileError(
          current.from.line,
          `invalid stage name ${JSON.stringify(words[2])}`,
        );
      }
      if (stages.some((s) => s.name === name)) {
        throw new DockerfileError(
          current.from.line,
          `stage name ${JSON.stringify(name)} is used twice`,
        );
      }
    } else if (words.length !== 1) {
      throw new DockerfileError(current.from.line, 'FROM expects an image [AS name]');
    }
    const image = words[0]!;
    if (image === '') throw new DockerfileError(current.from.line, 'FROM names no image');
    const platform = current.from.flags.platform;
    stages.push({
      index: stages.length,
      ...(name !== undefined ? { name } : {}),
      from: current.from,
      image,
      ...(platform !== undefined
        ? { platform: expandWord(platform, globalArgs, parsed.escape, current.from.line) }
        : {}),
      body: current.body,
    });
  };
  for (const ins of parsed.instructions) {
    if (ins.keyword === 'FROM') {
      finish();
      current = { from: ins, body: [] };
    } else if (current) {
      current.body.push(ins);
    } else {
      // Global ARG (before the first FROM).
      for (const [k, v] of keyValues(ins, globalArgs, parsed.escape, { allowBare: true })) {
        const given = Object.hasOwn(buildArgs, k) ? buildArgs[k] : undefined;
        const value = given ?? v;
        if (value !== undefined) globalArgs.set(k, value);
        else globalArgs.delete(k);
      }
    }
  }
  finish();

  let target = stages.length - 1;
  if (opts.target !== undefined && opts.target !== '') {
    const t = stages.findIndex((s) => s.name === opts.target!.toLowerCase());
    if (t < 0)
      throw new DockerfileError(0, `target stage ${JSON.stringify(opts.target)} not found`);
    target = t;
  }
  const order: number[] = [];
  const visiting = new Set<number>();
  const visit = (idx: number, line: number): void => {
    if (order.includes(idx)) return;
    if (visiting.has(idx))
      throw new DockerfileError(line, 'stages depend on each other in a circle');
    visiting.add(idx);
    const stage = stages[idx]!;
    const base = stageRef(stages, stage.image, idx);
    if (base !== undefined) visit(base, stage.from.line);
    for (const ins of stage.body) {
      const from = ins.flags.from;
      if (ins.keyword !== 'COPY' || from === undefined) continue;
      const ref = stageRef(stages, expandWord(from, globalArgs, parsed.escape, ins.line), idx);
      if (ref === undefined) {
        throw new DockerfileError(
          ins.line,
          `COPY --from=${from}: no earlier stage has that name or index (copying from an image is not supported)`,
        );
      }
      visit(ref, ins.line);
    }
    visiting.delete(idx);
    order.push(idx);
  };
  visit(target, 0);
  return { stages, order, globalArgs };
}

/** The index of an earlier stage that `ref` names (name or number), if any. */
export function stageRef(
  stages: readonly Stage[],
  ref: string,
  before: number,
): number | undefined {
  if (/^\d+$/.test(ref)) {
    const n = Number(ref);
    return n < before ? n : undefined;
  }
  const idx = stages.findIndex((s) => s.name === ref.toLowerCase());
  return idx >= 0 && idx < before ? idx : undefined;
}

/**
 * The Dockerfile parser (`services/builds/dockerfile.ts`) and the host side of build contexts
 * (`services/builds/context.ts`: .dockerignore, COPY source resolution, archives): pure unit
 * tests, no server.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import tarStream from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DockerfileError,
  expandWord,
  expandWords,
  keyValues,
  parseDockerfile,
  planStages,
} from '../src/services/builds/dockerfile.js';
import {
  ContextError,
  extractTar,
  hashEntries,
  parseDockerignore,
  resolveCopy,
} from '../src/services/builds/context.js';

const vars = (o: Record<string, string>) => new Map(Object.entries(o));

function refusal(text: string): DockerfileError {
  try {
    parseDockerfile(text);
  } catch (err) {
    expect(err).toBeInstanceOf(DockerfileError);
    return err as DockerfileError;
  }
  throw new Error('expected a DockerfileError');
}

describe('parseDockerfile', () => {
  it('joins continuations, drops comments and keeps the start line', () => {
    const p = parseDockerfile(
      [
        '# a comment',
        'FROM fastvm/base',
        '',
        'RUN echo a \\',
        '  # comment inside',
        '  && echo b',
        'ENV A=1',
      ].join('\n'),
    );
    expect(p.instructions.map((i) => [i.line, i.keyword])).toEqual([
      [2, 'FROM'],
      [4, 'RUN'],
      [7, 'ENV'],
    ]);
    expect(p.instructions[1]!.args).toBe('echo a   && echo b');
  });

  it('reads parser directives (escape, syntax) only at the top', () => {
    const p = parseDockerfile(
      '# syntax=docker/dockerfile:1\n# escape=`\nFROM x\nRUN echo a `\n  b\n',
    );
    expect(p.escape).toBe('`');
    expect(p.syntax).toBe('docker/dockerfile:1');
    expect(p.instructions[1]!.args).toBe('echo a   b');
    // After an instruction, "# escape=`" is a comment.
    const q = parseDockerfile('FROM x\n# escape=`\nRUN echo \\\n b');
    expect(q.escape).toBe('\\');
    expect(refusal('# escape=x\nFROM y').message).toMatch(/line 1: invalid escape/);
  });

  it('recognises exec (JSON) and shell forms, and flags', () => {
    const p = parseDockerfile(
      'FROM --platform=linux/amd64 a AS b\nRUN ["echo","hi"]\nCOPY --chown=1:2 --chmod=644 --from=b x y\nCMD echo [x\n',
    );
    expect(p.instructions[0]!.flags).toEqual({ platform: 'linux/amd64' });
    expect(p.instructions[1]!.json).toEqual(['echo', 'hi']);
    expect(p.instructions[2]!.flags).toEqual({ chown: '1:2', chmod: '644', from: 'b' });
    expect(p.instructions[2]!.args).toBe('x y');
    expect(p.instructions[3]!.json).toBeUndefined();
  });

  it('refuses unsupported and unknown instructions naming the line', () => {
    expect(refusal('FROM a\nRUN true\nHEALTHCHECK CMD true').message).toBe(
      'Dockerfile line 3: HEALTHCHECK is not supported by this builder',
    );
    expect(refusal('FROM a\nVOLUME /x').message).toMatch(/^Dockerfile line 2: VOLUME/);
    expect(refusal('FROM a\nONBUILD RUN x').message).toMatch(/line 2: ONBUILD/);
    expect(refusal('FROM a\nSTOPSIGNAL 9').message).toMatch(/line 2: STOPSIGNAL/);
    expect(refusal('FROM a\nFOO bar').message).toMatch(/line 2: unknown instruction "FOO"/);
    expect(refusal('FROM a\nRUN <<EOF\necho\nEOF').message).toMatch(/line 2: RUN with a heredoc/);
    expect(refusal('FROM a\nRUN --mount=type=cache,target=/x true').message).toMatch(
      /line 2: RUN --mount is not supported/,
    );
    expect(refusal('FROM a\nSHELL /bin/bash').message).toMatch(/line 2: SHELL needs a JSON array/);
    expect(refusal('RUN true').message).toMatch(/line 1: the first instruction must be FROM/);
    expect(refusal('# only\n\n').message).toMatch(/no instructions/);
    expect(refusal('FROM a\nCOPY --chown x y').message).toMatch(
      /line 2: COPY --chown needs a value/,
    );
  });
});

describe('variable substitution', () => {
  const v = vars({ A: 'x', EMPTY: '', SP: 'a b' });
  it('expands $V, ${V}, defaults and alternatives', () => {
    expect(expandWord('$A-${A}', v)).toBe('x-x');
    expect(expandWord('${NOPE:-d}|${EMPTY:-d}|${EMPTY-d}|${A:-d}', v)).toBe('d|d||x');
    expect(expandWord('${A:+y}|${NOPE:+y}|${EMPTY:+y}|${EMPTY+y}', v)).toBe('y|||y');
    expect(expandWord('${NOPE:-${A}}', v)).toBe('x');
    expect(expandWord('\\$A', v)).toBe('$A');
    expect(expandWord("'$A'", v)).toBe('$A');
    expect(expandWord('"$A b"', v)).toBe('x b');
    expect(expandWord('$NOPE', v)).toBe('');
  });
  it('splits words with quotes kept together', () => {
    // A variable's value stays one word.
    expect(expandWords('a "b c" $SP d\\ e', v)).toEqual(['a', 'b c', 'a b', 'd e']);
    expect(() => expandWords('"open', v, '\\', 7)).toThrow(/line 7: unmatched "/);
    expect(() => expandWord('${A', v, '\\', 3)).toThrow(/line 3: missing }/);
    expect(() => expandWord('${A/x/y}', v, '\\', 4)).toThrow(/line 4: bad substitution/);
  });
  it('reads KEY=VALUE pairs and the legacy ENV form', () => {
    const [env1, env2] = parseDockerfile(
      'FROM a\nENV A=1 B="two words" C=$A\nENV LEGACY some value\n',
    ).instructions.slice(1);
    expect(keyValues(env1!, vars({ A: 'z' }), '\\', { legacy: true })).toEqual([
      ['A', '1'],
      ['B', 'two words'],
      ['C', 'z'],
    ]);
    expect(keyValues(env2!, vars({}), '\\', { legacy: true })).toEqual([['LEGACY', 'some value']]);
  });
});

describe('planStages', () => {
  const text = [
    'ARG BASE=fastvm/base',
    'ARG UNUSED',
    'FROM ${BASE} AS build',
    'RUN make',
    'FROM debian:bookworm AS other',
    'RUN other',
    'FROM build AS test',
    'RUN test',
    'FROM fastvm/base',
    'COPY --from=build /out /out',
  ].join('\n');

  it('substitutes global ARGs into FROM and orders what the target needs', () => {
    const plan = planStages(parseDockerfile(text));
    expect(plan.stages.map((s) => [s.name, s.image])).toEqual([
      ['build', 'fastvm/base'],
      ['other', 'debian:bookworm'],
      ['test', 'build'],
      [undefined, 'fastvm/base'],
    ]);
    // The last stage needs only `build`.
    expect(plan.order).toEqual([0, 3]);
    expect(planStages(parseDockerfile(text), { target: 'test' }).order).toEqual([0, 2]);
    expect(planStages(parseDockerfile(text), { target: 'other' }).order).toEqual([1]);
  });

  it('applies build args over ARG defaults', () => {
    const plan = planStages(parseDockerfile(text), { buildArgs: { BASE: 'debian:12' } });
    expect(plan.stages[0]!.image).toBe('debian:12');
    expect(plan.globalArgs.get('BASE')).toBe('debian:12');
  });

  it('refuses unknown targets, unknown --from stages and duplicate names', () => {
    expect(() => planStages(parseDockerfile(text), { target: 'nope' })).toThrow(
      /target stage "nope" not found/,
    );
    expect(() =>
      planStages(
        parseDockerfile(
          'FROM a AS first\nFROM b AS later\nCOPY --from=first /x /y\nCOPY --from=nope /x /y',
        ),
      ),
    ).toThrow(/line 4: COPY --from=nope: no earlier stage/);
    expect(() => planStages(parseDockerfile('FROM a AS x\nFROM b AS x'))).toThrow(
      /line 2: stage name "x" is used twice/,
    );
  });
});

describe('build context', () => {
  let root: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-ctx-test-'));
    await fs.mkdir(path.join(root, 'src/sub'), { recursive: true });
    await fs.writeFile(path.join(root, 'a.txt'), 'A');
    await fs.writeFile(path.join(root, 'b.txt'), 'B');
    await fs.writeFile(path.join(root, 'c.log'), 'C');
    await fs.writeFile(path.join(root, 'src/main.sh'), 'echo', { mode: 0o755 });
    await fs.writeFile(path.join(root, 'src/sub/x.txt'), 'X');
    await fs.writeFile(path.join(root, 'src/sub/secret.key'), 'K');
    await fs.symlink('/etc/passwd', path.join(root, 'evil'));
    await fs.symlink('a.txt', path.join(root, 'good'));
  });
  afterAll(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  const ignore = parseDockerignore('# comment\n*.log\nsrc/sub\n!src/sub/x.txt\n');

  it('.dockerignore: patterns, directories, ! exceptions (last match wins)', () => {
    expect(ignore('c.log')).toBe(true);
    expect(ignore('a.txt')).toBe(false);
    expect(ignore('src/sub')).toBe(true);
    expect(ignore('src/sub/secret.key')).toBe(true);
    expect(ignore('src/sub/x.txt')).toBe(false);
    expect(parseDockerignore('')('anything')).toBe(false);
    expect(parseDockerignore('**/*.key')('deep/er/a.key')).toBe(true);
  });

  const copy = (sources: string[], dest: string, keyword: 'COPY' | 'ADD' = 'COPY') =>
    resolveCopy({ keyword, line: 9, root, ignore, sources, dest });

  it('copies a file to a path, or into a directory ending in /', async () => {
    expect((await copy(['a.txt'], '/x/y')).map((e) => e.dest)).toEqual(['/x/y']);
    expect((await copy(['a.txt'], '/x/')).map((e) => e.dest)).toEqual(['/x/a.txt']);
  });

  it('globs, several sources, and the directory rule', async () => {
    expect((await copy(['*.txt'], '/d/')).map((e) => e.dest)).toEqual(['/d/a.txt', '/d/b.txt']);
    await expect(copy(['a.txt', 'b.txt'], '/d')).rejects.toThrow(
      /line 9: COPY with more than one source needs a destination directory ending in \//,
    );
    // A directory's contents go into the destination; ignored files stay out.
    const entries = await copy(['src'], '/app');
    expect(entries.map((e) => `${e.type}:${e.dest}`)).toEqual([
      'directory:/app',
      'file:/app/main.sh',
      'file:/app/sub/x.txt',
    ]);
    expect(entries.find((e) => e.dest === '/app/main.sh')!.mode & 0o777).toBe(0o755);
  });

  it('refuses paths and symlinks that leave the context, and missing/ignored sources', async () => {
    await expect(copy(['../x'], '/y')).rejects.toThrow(
      'Dockerfile line 9: COPY ../x: the path is outside the build context',
    );
    await expect(copy(['evil'], '/y')).rejects.toThrow(/line 9: COPY evil: a symlink .* outside/);
    await expect(copy(['nope'], '/y')).rejects.toThrow(/line 9: COPY nope: not found/);
    await expect(copy(['c.log'], '/y')).rejects.toThrow(/excluded by .dockerignore/);
    await expect(copy(['*.none'], '/y/')).rejects.toThrow(/no files in the build context match/);
    await expect(copy(['http://x/y'], '/y', 'ADD')).rejects.toThrow(/ADD from a URL/);
    // A symlink inside the context is followed.
    expect((await copy(['good'], '/g')).map((e) => e.src)).toEqual([
      await fs.realpath(path.join(root, 'a.txt')),
    ]);
  });

  it('hashes content, not times', async () => {
    const h1 = await hashEntries(await copy(['a.txt'], '/x'));
    await fs.utimes(path.join(root, 'a.txt'), new Date(0), new Date(0));
    expect(await hashEntries(await copy(['a.txt'], '/x'))).toBe(h1);
    expect(await hashEntries(await copy(['b.txt'], '/x'))).not.toBe(h1);
    expect(await hashEntries(await copy(['a.txt'], '/z'))).not.toBe(h1);
  });

  it('unpacks tar.gz contexts and refuses entries outside them and oversize ones', async () => {
    const make = async (entries: Array<{ name: string; body: string }>): Promise<string> => {
      const pack = tarStream.pack();
      for (const e of entries) pack.entry({ name: e.name }, e.body);
      pack.finalize();
      const chunks: Buffer[] = [];
      for await (const c of pack) chunks.push(c as Buffer);
      const file = path.join(root, `ctx-${Math.random()}.tar.gz`);
      await fs.writeFile(file, zlib.gzipSync(Buffer.concat(chunks)));
      return file;
    };
    const dest = await fs.mkdtemp(path.join(os.tmpdir(), 'fastvm-ctx-out-'));
    try {
      const ok = await make([
        { name: 'Dockerfile', body: 'FROM x' },
        { name: 'd/f', body: 'ff' },
      ]);
      expect(await extractTar(ok, dest, 1000)).toBe(8);
      expect(await fs.readFile(path.join(dest, 'd/f'), 'utf8')).toBe('ff');
      const bad = await make([{ name: '../escape', body: 'x' }]);
      await expect(extractTar(bad, dest, 1000)).rejects.toThrow(ContextError);
      await expect(extractTar(ok, dest, 4)).rejects.toThrow(/more than 4 bytes/);
      const junk = path.join(root, 'junk.tar.gz');
      await fs.writeFile(junk, Buffer.from([0x1f, 0x8b, 1, 2, 3]));
      await expect(extractTar(junk, dest, 1000)).rejects.toThrow(/not a valid tar.gz/);
    } finally {
      await fs.rm(dest, { recursive: true, force: true });
    }
  });
});

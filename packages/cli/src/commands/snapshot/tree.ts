// fastvm snapshot tree [snapshot]: a snapshot's lineage drawn like `tree`, or every lineage.
import type { Command } from 'commander';
import type { Lineage, LineageNode } from 'fastvm';
import { newCommand, onRun, withRef, type CommandBase, type RunF } from '../../cmdutil.js';
import type { Factory } from '../../factory.js';
import { json } from '../../output.js';
import { colors, statusText } from '../../views.js';

export interface SnapshotTreeOptions extends CommandBase {
  /** One snapshot's lineage (path from its root and everything below); all when undefined. */
  snapshot: string | undefined;
}

export function newSnapshotTreeCommand(
  f: Factory,
  runF: RunF<SnapshotTreeOptions> = snapshotTreeRun,
): Command {
  const cmd = newCommand(
    f,
    'tree [snapshot]',
    "Draw a snapshot's lineage (the VMs and snapshots above and below it), or all of them",
  );
  return onRun(f, cmd, (c, base) => runF({ ...base, snapshot: c.args[0] }));
}

export async function snapshotTreeRun(o: SnapshotTreeOptions): Promise<number> {
  const client = await o.client();
  if (o.snapshot !== undefined) {
    const lineage = await withRef(o, 'snapshot', o.snapshot, (id) => client.lineage(id));
    if (o.json) o.io.stdout.write(json(lineage));
    else o.io.stdout.write(drawLineage(o, lineage));
    return 0;
  }
  // Every lineage once: oldest snapshots first; one already drawn in an earlier tree is skipped.
  const snaps = (await client.listSnapshots()).sort((a, b) =>
    a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0,
  );
  const seen = new Set<string>();
  const all: Lineage[] = [];
  for (const s of snaps) {
    if (seen.has(s.id)) continue;
    const lineage = await client.lineage(s.id);
    for (const n of [...lineage.ancestors, ...walk(lineage.descendants)]) seen.add(n.id);
    all.push(lineage);
  }
  if (o.json) o.io.stdout.write(json(all));
  else if (all.length === 0) o.io.stdout.write('No snapshots.\n');
  else o.io.stdout.write(all.map((l) => drawLineage(o, l)).join('\n'));
  return 0;
}

/**
 * The lineage as one tree: the path from the root down to the snapshot (marked), then what was
 * made from it.
 */
export function drawLineage(o: CommandBase, lineage: Lineage): string {
  const { ancestors, descendants } = lineage;
  const self = ancestors[ancestors.length - 1];
  // Nest the path: each ancestor's only child is the next one; the snapshot gets the tree below.
  let node: LineageNode | undefined;
  for (let i = ancestors.length - 1; i >= 0; i--) {
    const a = ancestors[i]!;
    node = { ...a, children: node ? [node] : descendants };
  }
  if (!node) return '';
  const lines = [label(o, node, self?.id)];
  drawChildren(o, node.children, '', lines, self?.id);
  if (lineage.truncated) lines.push(colors(o).dim('… (cut at 10 000 objects)'));
  return lines.join('\n') + '\n';
}

function drawChildren(
  o: CommandBase,
  nodes: LineageNode[],
  indent: string,
  lines: string[],
  mark: string | undefined,
): void {
  nodes.forEach((n, i) => {
    const last = i === nodes.length - 1;
    lines.push(`${indent}${last ? '└── ' : '├── '}${label(o, n, mark)}`);
    drawChildren(o, n.children, `${indent}${last ? '    ' : '│   '}`, lines, mark);
  });
}

/** `snapshot base 1a2b3c4d ready`, `vm w-1 5e6f7a8b running`, `vm 9c0d1e2f (deleted)`. */
function label(o: CommandBase, n: LineageNode, mark: string | undefined): string {
  const c = colors(o);
  const id = n.id.slice(0, 8);
  if (n.deleted) return c.dim(`${n.type} ${id} (deleted)`);
  const name = n.id === mark ? c.bold(n.name ?? id) : (n.name ?? id);
  const status = n.status ? ` ${statusText(o, n.status)}` : '';
  return `${n.type} ${name} ${c.dim(id)}${status}${n.id === mark ? ' ◀' : ''}`;
}

function* walk(nodes: LineageNode[]): Generator<LineageNode> {
  for (const n of nodes) {
    yield n;
    yield* walk(n.children);
  }
}

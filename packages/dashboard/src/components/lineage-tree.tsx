import type { Lineage, LineageNode } from '../api.js';
import { navigate } from '../router.js';

const COL = 200;
const ROW = 46;
const W = 164;
const H = 32;

interface Placed {
  node: LineageNode;
  x: number;
  y: number;
  parent?: Placed;
}

/** One tree: the ancestors' path down to the snapshot, then its descendants below it. */
function rootOf(lineage: Lineage): LineageNode | undefined {
  const path = lineage.ancestors;
  if (path.length === 0) return undefined;
  const copies = path.map((n) => ({ ...n, children: [] as LineageNode[] }));
  for (let i = 0; i + 1 < copies.length; i++) copies[i]!.children = [copies[i + 1]!];
  copies[copies.length - 1]!.children = lineage.descendants;
  return copies[0];
}

/** Columns by depth, rows by leaf order; a parent sits level with its first child. */
function layout(root: LineageNode): Placed[] {
  const out: Placed[] = [];
  let row = 0;
  const visit = (node: LineageNode, depth: number, parent?: Placed): Placed => {
    const placed: Placed = { node, x: depth * COL, y: 0, ...(parent ? { parent } : {}) };
    out.push(placed);
    if (node.children.length === 0) {
      placed.y = row++ * ROW;
    } else {
      const kids = node.children.map((c) => visit(c, depth + 1, placed));
      placed.y = kids[0]!.y;
    }
    return placed;
  };
  visit(root, 0);
  return out;
}

function label(n: LineageNode): string {
  const name = n.deleted ? `${n.name ?? n.id.slice(0, 8)} (deleted)` : (n.name ?? n.id.slice(0, 8));
  return name.length > 22 ? `${name.slice(0, 21)}…` : name;
}

/**
 * The snapshot's lineage as an SVG tree: VMs as rounded boxes, snapshots as square boxes;
 * the selected snapshot is highlighted; live nodes are links (Tab, Enter).
 */
export function LineageTree(props: { lineage: Lineage; selected: string }) {
  const root = rootOf(props.lineage);
  if (!root) return <p class="muted">No lineage recorded.</p>;
  const nodes = layout(root);
  const width = Math.max(...nodes.map((n) => n.x)) + W + 8;
  const height = Math.max(...nodes.map((n) => n.y)) + H + 8;
  return (
    <div class="tree-wrap">
      <svg
        class="lineage"
        width={width}
        height={height}
        viewBox={`-4 -4 ${width} ${height}`}
        role="group"
        aria-label="Lineage: VMs and the snapshots taken of them"
      >
        {nodes
          .filter((p) => p.parent)
          .map((p) => {
            const from = p.parent as Placed;
            const x1 = from.x + W;
            const y1 = from.y + H / 2;
            const x2 = p.x;
            const y2 = p.y + H / 2;
            const mid = (x1 + x2) / 2;
            return (
              <path
                key={`e-${p.node.type}-${p.node.id}`}
                class="edge"
                d={`M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`}
              />
            );
          })}
        {nodes.map((p) => {
          const n = p.node;
          const href = n.type === 'vm' ? `/vms/${n.id}` : `/snapshots/${n.id}`;
          const cls = `node ${n.type} ${n.deleted ? 'deleted' : ''} ${n.id === props.selected ? 'selected' : ''}`;
          const body = (
            <>
              <rect width={W} height={H} rx={n.type === 'vm' ? 12 : 3} />
              <text x={10} y={H / 2 + 4}>
                {n.type === 'vm' ? '▣ ' : '◆ '}
                {label(n)}
              </text>
              <title>{`${n.type} ${n.name ?? ''} ${n.id}${n.status ? ` (${n.status})` : ''}`}</title>
            </>
          );
          return (
            <g key={`${n.type}-${n.id}`} class={cls} transform={`translate(${p.x},${p.y})`}>
              {n.deleted ? (
                body
              ) : (
                <a
                  href={href}
                  aria-label={`${n.type === 'vm' ? 'VM' : 'Snapshot'} ${n.name ?? n.id}`}
                  onClick={(e) => {
                    e.preventDefault();
                    navigate(href);
                  }}
                >
                  {body}
                </a>
              )}
            </g>
          );
        })}
      </svg>
    </div>
  );
}

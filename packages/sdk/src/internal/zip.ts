// A small ZIP writer (deflate, no ZIP64) for build contexts: a directory, minus what its
// `.dockerignore` excludes is left to the server (it applies the file itself), plus an optional
// Dockerfile given as text. Symlinks are stored as symlinks (Unix mode in the external attributes).
import fsp from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

interface ZipEntry {
  name: string;
  data: Buffer;
  /** Unix mode with the file type bits. */
  mode: number;
}

/** The ZIP of `entries`. */
export function zipEntries(entries: readonly ZipEntry[]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    const isFile = (e.mode & 0o170000) === 0o100000;
    const packed = isFile && e.data.length > 0 ? zlib.deflateRawSync(e.data) : e.data;
    const method = isFile && e.data.length > 0 ? 8 : 0;
    const crc = crc32(e.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x0800, 6); // UTF-8 names
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(packed.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    parts.push(local, name, packed);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(0x031e, 4); // made by Unix, 3.0
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(0x0800, 8);
    c.writeUInt16LE(method, 10);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(packed.length, 20);
    c.writeUInt32LE(e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt32LE(((e.mode & 0xffff) << 16) >>> 0, 38);
    c.writeUInt32LE(offset, 42);
    central.push(c, name);
    offset += 30 + name.length + packed.length;
    if (offset > 0xffffffff) throw new Error('build context is too large (over 4 GiB)');
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cd, end]);
}

/** Every file, directory and symlink below `dir`, as ZIP entries (names relative, `/`). */
export async function zipDirectory(dir: string, extra: readonly ZipEntry[] = []): Promise<Buffer> {
  const entries: ZipEntry[] = [];
  const visit = async (abs: string, rel: string): Promise<void> => {
    const names = (await fsp.readdir(abs)).sort();
    for (const n of names) {
      const p = path.join(abs, n);
      const r = rel === '' ? n : `${rel}/${n}`;
      const st = await fsp.lstat(p);
      if (st.isSymbolicLink()) {
        entries.push({ name: r, data: Buffer.from(await fsp.readlink(p)), mode: 0o120777 });
      } else if (st.isDirectory()) {
        entries.push({ name: `${r}/`, data: Buffer.alloc(0), mode: 0o040000 | (st.mode & 0o7777) });
        await visit(p, r);
      } else if (st.isFile()) {
        entries.push({ name: r, data: await fsp.readFile(p), mode: 0o100000 | (st.mode & 0o7777) });
      }
    }
  };
  await visit(dir, '');
  const names = new Set(extra.map((e) => e.name));
  return zipEntries([...entries.filter((e) => !names.has(e.name)), ...extra]);
}

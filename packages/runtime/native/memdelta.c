/*
 * fastvm-memdelta: copy a QEMU guest's changed memory pages out of, or into, the process.
 *
 * A FastVM guest's RAM is a private copy-on-write mapping of a base file (see memshim.c). The pages
 * the guest changed are the mapping's private anonymous pages, listed by /proc/PID/pagemap
 * (present, not file-backed). A delta file stores pages compactly:
 *
 *   "FVMDELT2" | u64 ram_size | u64 nruns | u64 data_bytes | u64 table_offset | data
 *             | nruns x (u64 offset, u64 length)  (the run table, at table_offset, after the data)
 *
 * with offsets relative to the start of guest RAM and the data of all runs concatenated in order.
 * (The table comes last so that a dump can decide page by page what to keep while it streams.)
 * Files of the first format ("FVMDELT1": the table right after a 32-byte header, then the data)
 * are still read.
 *
 * A snapshot's memory is a *view*: a base file with a chain of deltas over it, later ones winning.
 * `dump` given a view keeps only the pages whose content differs from it, so a VM snapshotted
 * again after changing 1 MiB writes ~1 MiB, whatever it changed since its own start. Scattered
 * pages are moved with process_vm_readv/writev, up to IOV_MAX runs per system call, so the cost is
 * one memory copy of the changed pages, not one syscall per page.
 *
 *   fastvm-memdelta dump    PID START SIZE OUT [BASE [DELTA...]]
 *                           (prints {"runs":N,"bytes":B,"examined":E}; with BASE: the pages that
 *                           differ from the view BASE+DELTA..., else every private page)
 *   fastvm-memdelta apply   PID START IN...     (the deltas in order)
 *   fastvm-memdelta flatten BASE OUT IN...      (OUT = BASE with the deltas written over it)
 *   fastvm-memdelta merge   OUT IN...           (one delta equal to the chain IN...)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define PAGE 4096ULL
#define PM_PRESENT (1ULL << 63)
#define PM_FILE (1ULL << 61)
#define BATCH 1024
#define COPY_BUF (16ULL << 20)

/*
 * PAGEMAP_SCAN (Linux 6.7+; Debian 12's headers predate it): the kernel walks the page tables and
 * returns only the ranges whose pages match, instead of 8 bytes per page of the whole mapping, so
 * a dump costs what the guest changed, not what its RAM size is. Values from the kernel's uapi
 * <linux/fs.h>.
 */
#define PAGEMAP_SCAN_IOCTL _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_FILE (1ULL << 2)
#define PAGE_IS_PRESENT (1ULL << 3)
#define SCAN_VEC 4096

struct page_region {
    uint64_t start, end, categories;
};

struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

static const char MAGIC1[8] = {'F', 'V', 'M', 'D', 'E', 'L', 'T', '1'};
static const char MAGIC2[8] = {'F', 'V', 'M', 'D', 'E', 'L', 'T', '2'};
#define HDR2 40ULL

struct run {
    uint64_t off, len;
};

static void die(const char *what)
{
    fprintf(stderr, "fastvm-memdelta: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

static void read_all(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO;
            die("read");
        }
        p += r;
        n -= (size_t)r;
    }
}

/* Appends [off, off+len) to runs, merging it with the last run when they touch. */
static struct run *add_run(struct run *runs, uint64_t *n, uint64_t *cap, uint64_t off, uint64_t len)
{
    if (*n > 0 && runs[*n - 1].off + runs[*n - 1].len == off) {
        runs[*n - 1].len += len;
        return runs;
    }
    if (*n == *cap) {
        *cap *= 2;
        runs = realloc(runs, *cap * sizeof(*runs));
        if (runs == NULL)
            die("realloc");
    }
    runs[*n].off = off;
    runs[*n].len = len;
    (*n)++;
    return runs;
}

/*
 * The same runs as scan() below, listed by the kernel with PAGEMAP_SCAN: present and not
 * file-backed. NULL (errno set) when the kernel does not have the ioctl.
 */
static struct run *scan_ioctl(int fd, uint64_t start, uint64_t size, uint64_t *nruns)
{
    uint64_t cap = 1024, n = 0, pos = start, end = start + size;
    struct run *runs = malloc(cap * sizeof(*runs));
    struct page_region *vec = malloc(SCAN_VEC * sizeof(*vec));

    if (runs == NULL || vec == NULL)
        die("malloc");
    while (pos < end) {
        struct pm_scan_arg a = {
            .size = sizeof(a),
            .start = pos,
            .end = end,
            .vec = (uint64_t)(uintptr_t)vec,
            .vec_len = SCAN_VEC,
            .category_mask = PAGE_IS_PRESENT | PAGE_IS_FILE,
            .category_inverted = PAGE_IS_FILE,
            .return_mask = PAGE_IS_PRESENT,
        };
        long got = ioctl(fd, PAGEMAP_SCAN_IOCTL, &a);

        if (got < 0) {
            if (pos == start && (errno == ENOTTY || errno == EINVAL || errno == EOPNOTSUPP)) {
                free(runs);
                free(vec);
                return NULL;
            }
            die("PAGEMAP_SCAN");
        }
        for (long i = 0; i < got; i++)
            runs = add_run(runs, &n, &cap, vec[i].start - start, vec[i].end - vec[i].start);
        if (a.walk_end <= pos)
            die("PAGEMAP_SCAN made no progress");
        pos = a.walk_end;
    }
    free(vec);
    *nruns = n;
    return runs;
}

/* Private anonymous page runs of [start, start+size) in process pid. */
static struct run *scan(pid_t pid, uint64_t start, uint64_t size, uint64_t *nruns)
{
    char path[64];
    uint64_t pages = size / PAGE, cap = 1024, n = 0;
    struct run *runs = malloc(cap * sizeof(*runs));
    uint64_t *pm = malloc(65536 * sizeof(uint64_t));
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || runs == NULL || pm == NULL)
        die("pagemap");
    if (getenv("FASTVM_MEMDELTA_READ_SCAN") == NULL) {
        struct run *fast = scan_ioctl(fd, start, size, nruns);

        if (fast != NULL) {
            close(fd);
            free(pm);
            free(runs);
            return fast;
        }
    }
    for (uint64_t first = 0; first < pages; first += 65536) {
        uint64_t want = pages - first < 65536 ? pages - first : 65536;
        ssize_t got = pread(fd, pm, want * 8, (off_t)((start / PAGE + first) * 8));
        if (got < 0)
            die("read pagemap");
        for (uint64_t i = 0; i < (uint64_t)got / 8; i++) {
            if ((pm[i] & PM_PRESENT) && !(pm[i] & PM_FILE))
                runs = add_run(runs, &n, &cap, (first + i) * PAGE, PAGE);
        }
    }
    close(fd);
    free(pm);
    *nruns = n;
    return runs;
}

/* ---- delta files ------------------------------------------------------------------------- */

struct delta {
    int fd;
    uint64_t ram_size, n, bytes, data_off;
    struct run *runs;
};

/* Opens a delta (either format) and reads its run table; the fd is left at the data. */
static void load(const char *in, struct delta *d)
{
    char magic[8];
    uint64_t hdr[4];

    d->fd = open(in, O_RDONLY | O_CLOEXEC);
    if (d->fd < 0)
        die(in);
    read_all(d->fd, magic, sizeof(magic));
    if (memcmp(magic, MAGIC2, 8) == 0) {
        read_all(d->fd, hdr, 4 * sizeof(uint64_t));
        d->data_off = HDR2;
    } else if (memcmp(magic, MAGIC1, 8) == 0) {
        read_all(d->fd, hdr, 3 * sizeof(uint64_t));
        d->data_off = 32 + hdr[1] * sizeof(struct run);
        hdr[3] = 32;
    } else {
        errno = EINVAL;
        die("not a delta file");
    }
    d->ram_size = hdr[0];
    d->n = hdr[1];
    d->bytes = hdr[2];
    d->runs = malloc(d->n ? d->n * sizeof(struct run) : 1);
    if (d->runs == NULL)
        die("malloc");
    if (lseek(d->fd, (off_t)hdr[3], SEEK_SET) < 0)
        die("lseek");
    read_all(d->fd, d->runs, d->n * sizeof(struct run));
    if (lseek(d->fd, (off_t)d->data_off, SEEK_SET) < 0)
        die("lseek");
}

static void unload(struct delta *d)
{
    close(d->fd);
    free(d->runs);
}

/* A delta being written: data streamed after the header, run table and header at the end. */
struct writer {
    int fd;
    uint64_t n, cap, bytes, fill;
    struct run *runs;
    char *buf;
};

static void writer_open(struct writer *w, const char *out)
{
    w->fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    w->n = w->bytes = w->fill = 0;
    w->cap = 1024;
    w->runs = malloc(w->cap * sizeof(struct run));
    w->buf = malloc(COPY_BUF);
    if (w->fd < 0 || w->runs == NULL || w->buf == NULL)
        die(out);
    if (lseek(w->fd, (off_t)HDR2, SEEK_SET) < 0)
        die("lseek");
}

static void writer_flush(struct writer *w)
{
    write_all(w->fd, w->buf, w->fill);
    w->fill = 0;
}

/* Appends `len` bytes of guest RAM at offset `off`. */
static void writer_add(struct writer *w, uint64_t off, const char *data, uint64_t len)
{
    w->runs = add_run(w->runs, &w->n, &w->cap, off, len);
    w->bytes += len;
    while (len > 0) {
        uint64_t take = COPY_BUF - w->fill < len ? COPY_BUF - w->fill : len;
        memcpy(w->buf + w->fill, data, take);
        w->fill += take;
        data += take;
        len -= take;
        if (w->fill == COPY_BUF)
            writer_flush(w);
    }
}

static void writer_close(struct writer *w, uint64_t ram_size)
{
    uint64_t hdr[4] = {ram_size, w->n, w->bytes, HDR2 + w->bytes};

    writer_flush(w);
    write_all(w->fd, w->runs, w->n * sizeof(struct run));
    if (pwrite(w->fd, MAGIC2, 8, 0) != 8 || pwrite(w->fd, hdr, sizeof(hdr), 8) != sizeof(hdr))
        die("write header");
    if (close(w->fd) < 0)
        die("close");
    free(w->runs);
    free(w->buf);
}

/* ---- views: a base file and a chain of deltas, later ones winning ------------------------- */

struct view {
    const char *base; /* mapped base file, `base_len` bytes; reads beyond it are zeros */
    uint64_t base_len, size;
    int nd;
    const char **dmap; /* mapped delta files */
    size_t *dlen;
    uint64_t *src; /* per page: 0 = base, else (delta index + 1) << 48 | byte offset in it */
    struct run *druns; /* every run of every delta */
    uint64_t ndruns;
};

static const char ZERO[PAGE];

/* Maps a file read-only; `populate`: all of it at once (a delta: read whole anyway). */
static const void *map_file(int fd, size_t len, int populate)
{
    if (len == 0)
        return ZERO;
    void *p = mmap(NULL, len, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

static void view_open(struct view *v, uint64_t size, const char *base, int nd, char **deltas)
{
    struct stat st;
    int bfd = open(base, O_RDONLY | O_CLOEXEC);

    if (bfd < 0 || fstat(bfd, &st) < 0)
        die(base);
    v->size = size;
    v->base_len = (uint64_t)st.st_size < size ? (uint64_t)st.st_size : size;
    v->base = map_file(bfd, v->base_len, 0);
    close(bfd);
    v->nd = nd;
    v->dmap = calloc((size_t)nd + 1, sizeof(*v->dmap));
    v->dlen = calloc((size_t)nd + 1, sizeof(*v->dlen));
    /* calloc: pages no delta names stay zero (untouched memory costs nothing). */
    v->src = calloc(size / PAGE, sizeof(uint64_t));
    v->druns = NULL;
    v->ndruns = 0;
    if (v->dmap == NULL || v->dlen == NULL || v->src == NULL)
        die("calloc");
    for (int i = 0; i < nd; i++) {
        struct delta d;
        load(deltas[i], &d);
        if (fstat(d.fd, &st) < 0)
            die(deltas[i]);
        v->dlen[i] = (size_t)st.st_size;
        v->dmap[i] = map_file(d.fd, v->dlen[i], 1);
        v->druns = realloc(v->druns, (v->ndruns + d.n + 1) * sizeof(struct run));
        if (v->druns == NULL)
            die("realloc");
        uint64_t pos = d.data_off;
        for (uint64_t r = 0; r < d.n; r++) {
            if (d.runs[r].off + d.runs[r].len > size || pos + d.runs[r].len > v->dlen[i]) {
                errno = EINVAL;
                die("delta run outside the view");
            }
            for (uint64_t p = 0; p < d.runs[r].len; p += PAGE)
                v->src[(d.runs[r].off + p) / PAGE] = ((uint64_t)(i + 1) << 48) | (pos + p);
            pos += d.runs[r].len;
            v->druns[v->ndruns++] = d.runs[r];
        }
        unload(&d);
    }
}

/* The view's page at RAM offset `off`. */
static const char *view_page(const struct view *v, uint64_t off)
{
    uint64_t s = v->src[off / PAGE];
    if (s != 0)
        return v->dmap[(s >> 48) - 1] + (s & ((1ULL << 48) - 1));
    if (off + PAGE <= v->base_len)
        return v->base + off;
    return ZERO;
}

static int cmp_run(const void *a, const void *b)
{
    const struct run *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Sorts runs and merges those that overlap or touch. */
static uint64_t normalise(struct run *runs, uint64_t n)
{
    uint64_t k = 0;
    qsort(runs, n, sizeof(*runs), cmp_run);
    for (uint64_t i = 0; i < n; i++) {
        if (k > 0 && runs[i].off <= runs[k - 1].off + runs[k - 1].len) {
            uint64_t end = runs[i].off + runs[i].len;
            if (end > runs[k - 1].off + runs[k - 1].len)
                runs[k - 1].len = end - runs[k - 1].off;
        } else {
            runs[k++] = runs[i];
        }
    }
    return k;
}

/* ---- commands ------------------------------------------------------------------------------ */

/*
 * Without a view: every private page. With one: the private pages and the pages the view's deltas
 * name (a page that went back to the base file's content would differ from the view there), each
 * compared with the view and kept only if it differs.
 */
static int dump(pid_t pid, uint64_t start, uint64_t size, const char *out, const char *base, int nd,
                char **deltas)
{
    uint64_t n, examined = 0;
    struct run *runs = scan(pid, start, size, &n);
    struct view v;
    struct writer w;
    struct iovec local, remote[BATCH];
    uint64_t roff[BATCH];
    char *buf = malloc(COPY_BUF);

    if (buf == NULL)
        die("malloc");
    if (base != NULL) {
        view_open(&v, size, base, nd, deltas);
        runs = realloc(runs, (n + v.ndruns + 1) * sizeof(*runs));
        if (runs == NULL)
            die("realloc");
        memcpy(runs + n, v.druns, v.ndruns * sizeof(*runs));
        n = normalise(runs, n + v.ndruns);
    }
    writer_open(&w, out);
    uint64_t i = 0, done = 0;
    while (i < n) {
        uint64_t k = 0, bytes = 0;
        while (i < n && k < BATCH && bytes < COPY_BUF) {
            uint64_t take = runs[i].len - done;
            if (take > COPY_BUF - bytes)
                take = COPY_BUF - bytes;
            roff[k] = runs[i].off + done;
            remote[k].iov_base = (void *)(uintptr_t)(start + roff[k]);
            remote[k].iov_len = take;
            bytes += take;
            k++;
            done += take;
            if (done == runs[i].len) {
                i++;
                done = 0;
            }
        }
        local.iov_base = buf;
        local.iov_len = bytes;
        ssize_t r = process_vm_readv(pid, &local, 1, remote, k, 0);
        if (r < 0 || (uint64_t)r != bytes) {
            if (r >= 0)
                errno = EIO;
            die("process_vm_readv");
        }
        examined += bytes;
        const char *p = buf;
        for (uint64_t j = 0; j < k; j++) {
            if (base == NULL) {
                writer_add(&w, roff[j], p, remote[j].iov_len);
                p += remote[j].iov_len;
                continue;
            }
            for (uint64_t q = 0; q < remote[j].iov_len; q += PAGE, p += PAGE) {
                if (memcmp(p, view_page(&v, roff[j] + q), PAGE) != 0)
                    writer_add(&w, roff[j] + q, p, PAGE);
            }
        }
    }
    writer_close(&w, size);
    printf("{\"runs\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"examined\":%" PRIu64 "}\n", w.n, w.bytes,
           examined);
    return 0;
}

/*
 * Writes the chain's pages into the process, each page once (from the last delta that has it),
 * straight from the mapped delta files: a page the chain changed N times costs one page fault in
 * the new process, not N.
 */
static int apply(pid_t pid, uint64_t start, int nd, char **in)
{
    struct delta first;
    struct view v;
    struct iovec local[BATCH], remote[BATCH];
    int kl = 0, kr = 0;
    uint64_t bytes = 0;

    load(in[0], &first);
    uint64_t size = first.ram_size;
    unload(&first);
    view_open(&v, size, "/dev/null", nd, in);
    uint64_t n = normalise(v.druns, v.ndruns);
    for (uint64_t i = 0; i < n; i++) {
        for (uint64_t p = 0; p < v.druns[i].len; p += PAGE) {
            uint64_t off = v.druns[i].off + p;
            const char *src = view_page(&v, off);
            int joins_local = kl > 0 && (const char *)local[kl - 1].iov_base + local[kl - 1].iov_len == src;
            int joins_remote = kr > 0 && (uint64_t)(uintptr_t)remote[kr - 1].iov_base +
                                                 remote[kr - 1].iov_len == start + off;
            if ((!joins_local && kl == BATCH) || (!joins_remote && kr == BATCH) || bytes >= COPY_BUF) {
                ssize_t w = process_vm_writev(pid, local, (unsigned long)kl, remote, (unsigned long)kr, 0);
                if (w < 0 || (uint64_t)w != bytes) {
                    if (w >= 0)
                        errno = EIO;
                    die("process_vm_writev");
                }
                kl = kr = 0;
                bytes = 0;
                joins_local = joins_remote = 0;
            }
            if (joins_local)
                local[kl - 1].iov_len += PAGE;
            else
                local[kl++] = (struct iovec){(void *)src, PAGE};
            if (joins_remote)
                remote[kr - 1].iov_len += PAGE;
            else
                remote[kr++] = (struct iovec){(void *)(uintptr_t)(start + off), PAGE};
            bytes += PAGE;
        }
    }
    if (bytes > 0) {
        ssize_t w = process_vm_writev(pid, local, (unsigned long)kl, remote, (unsigned long)kr, 0);
        if (w < 0 || (uint64_t)w != bytes) {
            if (w >= 0)
                errno = EIO;
            die("process_vm_writev");
        }
    }
    return 0;
}

/* Copy BASE to OUT keeping holes, then write the deltas' runs over it in order. */
static int flatten(const char *base, const char *out, int nd, char **in)
{
    int bfd, ofd;
    struct stat st;
    char *buf = malloc(COPY_BUF);

    bfd = open(base, O_RDONLY | O_CLOEXEC);
    ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (bfd < 0 || ofd < 0 || buf == NULL || fstat(bfd, &st) < 0)
        die("flatten open");
    if (ftruncate(ofd, st.st_size) < 0)
        die("ftruncate");
    off_t pos = 0;
    for (;;) {
        off_t data = lseek(bfd, pos, SEEK_DATA);
        if (data < 0)
            break;
        off_t hole = lseek(bfd, data, SEEK_HOLE);
        for (off_t p = data; p < hole;) {
            size_t want = (size_t)(hole - p) < COPY_BUF ? (size_t)(hole - p) : COPY_BUF;
            ssize_t r = pread(bfd, buf, want, p);
            if (r <= 0)
                die("read base");
            if (pwrite(ofd, buf, (size_t)r, p) != r)
                die("write flat");
            p += r;
        }
        pos = hole;
    }
    for (int k = 0; k < nd; k++) {
        struct delta d;
        load(in[k], &d);
        for (uint64_t i = 0; i < d.n; i++) {
            for (uint64_t done = 0; done < d.runs[i].len;) {
                size_t want = d.runs[i].len - done < COPY_BUF ? d.runs[i].len - done : COPY_BUF;
                read_all(d.fd, buf, want);
                if (pwrite(ofd, buf, want, (off_t)(d.runs[i].off + done)) != (ssize_t)want)
                    die("write flat");
                done += want;
            }
        }
        unload(&d);
    }
    if (close(ofd) < 0)
        die("close");
    return 0;
}

/* One delta with the content of the chain IN... (each page from the last delta naming it). */
static int merge(const char *out, int nd, char **in)
{
    struct delta first;
    struct view v;
    struct writer w;

    load(in[0], &first);
    uint64_t size = first.ram_size;
    unload(&first);
    view_open(&v, size, "/dev/null", nd, in);
    uint64_t n = normalise(v.druns, v.ndruns);
    writer_open(&w, out);
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t p = 0; p < v.druns[i].len; p += PAGE)
            writer_add(&w, v.druns[i].off + p, view_page(&v, v.druns[i].off + p), PAGE);
    writer_close(&w, size);
    printf("{\"runs\":%" PRIu64 ",\"bytes\":%" PRIu64 "}\n", w.n, w.bytes);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 6 && strcmp(argv[1], "dump") == 0)
        return dump(atoi(argv[2]), strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0), argv[5],
                    argc > 6 ? argv[6] : NULL, argc > 7 ? argc - 7 : 0, argv + 7);
    if (argc >= 5 && strcmp(argv[1], "apply") == 0)
        return apply(atoi(argv[2]), strtoull(argv[3], NULL, 0), argc - 4, argv + 4);
    if (argc >= 4 && strcmp(argv[1], "flatten") == 0)
        return flatten(argv[2], argv[3], argc - 4, argv + 4);
    if (argc >= 4 && strcmp(argv[1], "merge") == 0)
        return merge(argv[2], argc - 3, argv + 3);
    fprintf(stderr, "usage: fastvm-memdelta dump PID START SIZE OUT [BASE [DELTA...]] | "
                    "apply PID START IN... | flatten BASE OUT IN... | merge OUT IN...\n");
    return 2;
}

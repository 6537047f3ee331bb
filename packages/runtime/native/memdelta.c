/*
 * fastvm-memdelta: copy a QEMU guest's changed memory pages out of, or into, the process.
 *
 * A FastVM guest's RAM is a private copy-on-write mapping of a base file (see memshim.c). The pages
 * the guest changed are the mapping's private anonymous pages, listed by /proc/PID/pagemap
 * (present, not file-backed). A delta file stores them compactly:
 *
 *   "FVMDELT1" | u64 ram_size | u64 nruns | u64 data_bytes | nruns x (u64 offset, u64 length) | data
 *
 * with offsets relative to the start of guest RAM and the data of all runs concatenated in order.
 * Scattered pages are moved with process_vm_readv/writev, up to IOV_MAX runs per system call, so
 * the cost is one memory copy of the changed pages, not one syscall per page.
 *
 *   fastvm-memdelta dump    PID START SIZE OUT     (prints {"runs":N,"bytes":B})
 *   fastvm-memdelta apply   PID START IN
 *   fastvm-memdelta flatten BASE IN OUT            (OUT = BASE with the delta written over it)
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

static const char MAGIC[8] = {'F', 'V', 'M', 'D', 'E', 'L', 'T', '1'};

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

/*
 * Stream the runs' data between the remote process and fd (the delta's data section), through
 * one reused buffer of COPY_BUF bytes and up to BATCH iovecs per process_vm_* call.
 */
static void stream(pid_t pid, uint64_t start, const struct run *runs, uint64_t n, int fd, int to_remote)
{
    struct iovec local, remote[BATCH];
    char *buf = malloc(COPY_BUF);
    uint64_t i = 0, done = 0; /* run i, bytes of it already moved */

    if (buf == NULL)
        die("malloc");
    while (i < n) {
        uint64_t k = 0, bytes = 0;
        while (i < n && k < BATCH && bytes < COPY_BUF) {
            uint64_t take = runs[i].len - done;
            if (take > COPY_BUF - bytes)
                take = COPY_BUF - bytes;
            remote[k].iov_base = (void *)(uintptr_t)(start + runs[i].off + done);
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
        if (to_remote)
            read_all(fd, buf, bytes);
        ssize_t r = to_remote ? process_vm_writev(pid, &local, 1, remote, k, 0)
                              : process_vm_readv(pid, &local, 1, remote, k, 0);
        if (r < 0 || (uint64_t)r != bytes) {
            if (r >= 0)
                errno = EIO;
            die(to_remote ? "process_vm_writev" : "process_vm_readv");
        }
        if (!to_remote)
            write_all(fd, buf, bytes);
    }
    free(buf);
}

static int dump(pid_t pid, uint64_t start, uint64_t size, const char *out)
{
    uint64_t n, bytes = 0, hdr[3];
    struct run *runs = scan(pid, start, size, &n);
    for (uint64_t i = 0; i < n; i++)
        bytes += runs[i].len;
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die(out);
    hdr[0] = size;
    hdr[1] = n;
    hdr[2] = bytes;
    write_all(fd, MAGIC, sizeof(MAGIC));
    write_all(fd, hdr, sizeof(hdr));
    write_all(fd, runs, n * sizeof(*runs));
    stream(pid, start, runs, n, fd, 0);
    if (close(fd) < 0)
        die("close");
    printf("{\"runs\":%" PRIu64 ",\"bytes\":%" PRIu64 "}\n", n, bytes);
    return 0;
}

static struct run *load(const char *in, int *fdp, uint64_t *n, uint64_t *bytes)
{
    char magic[8];
    uint64_t hdr[3];
    int fd = open(in, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(in);
    read_all(fd, magic, sizeof(magic));
    if (memcmp(magic, MAGIC, sizeof(MAGIC)) != 0) {
        errno = EINVAL;
        die("not a delta file");
    }
    read_all(fd, hdr, sizeof(hdr));
    *n = hdr[1];
    *bytes = hdr[2];
    struct run *runs = malloc(*n ? *n * sizeof(*runs) : 1);
    if (runs == NULL)
        die("malloc");
    read_all(fd, runs, *n * sizeof(*runs));
    *fdp = fd;
    return runs;
}

static int apply(pid_t pid, uint64_t start, const char *in)
{
    int fd;
    uint64_t n, bytes;
    struct run *runs = load(in, &fd, &n, &bytes);
    stream(pid, start, runs, n, fd, 1);
    close(fd);
    return 0;
}

/* Copy BASE to OUT keeping holes, then write the delta's runs over it. */
static int flatten(const char *base, const char *in, const char *out)
{
    int fd, bfd, ofd;
    uint64_t n, bytes;
    struct stat st;
    struct run *runs = load(in, &fd, &n, &bytes);
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
    for (uint64_t i = 0; i < n; i++) {
        for (uint64_t done = 0; done < runs[i].len;) {
            size_t want = runs[i].len - done < COPY_BUF ? runs[i].len - done : COPY_BUF;
            read_all(fd, buf, want);
            if (pwrite(ofd, buf, want, (off_t)(runs[i].off + done)) != (ssize_t)want)
                die("write flat");
            done += want;
        }
    }
    if (close(ofd) < 0)
        die("close");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "dump") == 0)
        return dump(atoi(argv[2]), strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0), argv[5]);
    if (argc == 5 && strcmp(argv[1], "apply") == 0)
        return apply(atoi(argv[2]), strtoull(argv[3], NULL, 0), argv[4]);
    if (argc == 5 && strcmp(argv[1], "flatten") == 0)
        return flatten(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: fastvm-memdelta dump PID START SIZE OUT | apply PID START IN | "
                    "flatten BASE IN OUT\n");
    return 2;
}

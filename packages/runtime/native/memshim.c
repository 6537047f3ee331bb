/*
 * fastvm-memshim: an LD_PRELOAD library for QEMU that maps one memory file privately.
 *
 * QEMU skips guest RAM in a migration stream (`x-ignore-shared`) only when the RAM block was
 * created with share=on. A restored FastVM guest must not write into the snapshot's memory file,
 * which other forks map too, so its RAM has to be a private copy-on-write mapping. This library
 * lets both hold: QEMU is started with `memory-backend-file,share=on,mem-path=$FASTVM_MEMSHIM_PATH`
 * and believes the block is shared, while the actual mmap() of that one file is turned into
 * MAP_PRIVATE | MAP_NORESERVE. Snapshots then save only device state through migration; the pages
 * the guest changed are the process's private anonymous pages, which the runtime reads from
 * /proc/PID/pagemap and /proc/PID/mem.
 *
 * Hole punching on that file (QEMU's RAM discard for shared file memory) is refused, so the
 * snapshot file can never be modified through this process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fd_is_target(int fd)
{
    const char *target = getenv("FASTVM_MEMSHIM_PATH");
    char link[64], path[PATH_MAX];
    ssize_t n;

    if (fd < 0 || target == NULL || target[0] == '\0')
        return 0;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof(path) - 1);
    if (n < 0)
        return 0;
    path[n] = '\0';
    return strcmp(path, target) == 0;
}

static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return MAP_FAILED;
    }
    return (void *)r;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if ((flags & MAP_SHARED) && !(flags & MAP_ANONYMOUS) && fd_is_target(fd)) {
        flags &= ~(MAP_SHARED | MAP_SHARED_VALIDATE);
        flags |= MAP_PRIVATE | MAP_NORESERVE;
        /* MAP_SYNC is only valid with MAP_SHARED_VALIDATE. */
#ifdef MAP_SYNC
        flags &= ~MAP_SYNC;
#endif
    }
    return raw_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mmap(addr, len, prot, flags, fd, off);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    if ((mode & FALLOC_FL_PUNCH_HOLE) && fd_is_target(fd)) {
        errno = EPERM;
        return -1;
    }
    return (int)syscall(SYS_fallocate, fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
    return fallocate(fd, mode, off, len);
}

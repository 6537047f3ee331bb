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
 * snapshot file can never be modified through this process. A confined QEMU (its own
 * unprivileged user) may not open the file for writing at all: QEMU opens it O_RDWR, and when
 * that is refused the shim opens it O_RDONLY instead (a private mapping of a read-only file is
 * writable). With $FASTVM_MEMSHIM_NODUMP=1 the process makes itself non-dumpable, so that other
 * processes of the same user (other VMs' QEMUs) cannot ptrace it or read its memory.
 *
 * Freezing memory for a snapshot without a long pause: when $FASTVM_MEMSHIM_CTL names a socket
 * path, a thread serves it. On a connection that sends "fork" it forks a frozen copy of the
 * process and writes the copy's pid, one line. The copy shares every page copy-on-write and only
 * waits; the runtime reads the changed pages out of it while the VM runs on, then hangs up, and
 * the thread kills and reaps the copy. QEMU marks guest RAM MADV_DONTFORK; the RAM mapping is made forkable just for
 * that fork (the vCPUs are stopped at that moment).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * Read from the environment once, by the constructor, which then removes our variables (and
 * LD_PRELOAD) so that QEMU's own children, such as the `cat` of an exec: migration, run plain.
 */
static char target[PATH_MAX];

static int fd_is_target(int fd)
{
    char link[64], path[PATH_MAX];
    ssize_t n;

    if (fd < 0 || target[0] == '\0')
        return 0;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof(path) - 1);
    if (n < 0)
        return 0;
    path[n] = '\0';
    return strcmp(path, target) == 0;
}

/*
 * open() of the memory file for writing, refused (a confined QEMU): open it read-only instead.
 * Any other file, or another error, is left as it was.
 */
static int reopen_readonly(int fd, int err, int dirfd, const char *path, int flags)
{
    int ro;

    if (fd >= 0 || target[0] == '\0' || (flags & O_ACCMODE) != O_RDWR ||
        (err != EACCES && err != EPERM && err != EROFS))
        return fd;
    ro = (int)syscall(SYS_openat, dirfd, path, (flags & ~(O_ACCMODE | O_CREAT | O_TRUNC)) | O_RDONLY, 0);
    if (ro >= 0 && fd_is_target(ro))
        return ro;
    if (ro >= 0)
        close(ro);
    errno = err;
    return -1;
}

static int open_at(int dirfd, const char *path, int flags, mode_t mode)
{
    int fd = (int)syscall(SYS_openat, dirfd, path, flags, mode);
    return reopen_readonly(fd, fd < 0 ? errno : 0, dirfd, path, flags);
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(dirfd, path, flags, mode);
}

/* The _FORTIFY_SOURCE entry points (no mode: O_CREAT is not allowed there). */
int __open_2(const char *path, int flags)
{
    return open_at(AT_FDCWD, path, flags, 0);
}

int __open64_2(const char *path, int flags)
{
    return open_at(AT_FDCWD, path, flags, 0);
}

/* The one converted mapping (guest RAM); set once by mmap(). */
static void *ram_addr;
static size_t ram_len;

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
        void *p = raw_mmap(addr, len, prot, flags, fd, off);
        if (p != MAP_FAILED) {
            ram_addr = p;
            ram_len = len;
        }
        return p;
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

/* fork() without glibc's atfork handlers: the children below only make raw system calls. */
static pid_t raw_fork(void)
{
    return (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
}

/*
 * Fork a frozen copy of this process; returns the copy's pid or -1. The copy is our direct child,
 * so that we (not an init that may never reap) collect it once it is killed.
 */
static pid_t freeze_copy(void)
{
    pid_t copy;

    if (ram_addr != NULL)
        syscall(SYS_madvise, ram_addr, ram_len, MADV_DOFORK);
    copy = raw_fork();
    if (copy == 0) {
        /*
         * The frozen copy: hold the memory until SIGKILL (signals stay blocked). It must hold
         * no descriptor: a copy of a migration pipe or of a client socket would keep the other
         * end waiting for an EOF that never comes.
         */
        syscall(SYS_close_range, 0U, ~0U, 0U);
        for (;;)
            syscall(SYS_pause);
    }
    if (ram_addr != NULL)
        syscall(SYS_madvise, ram_addr, ram_len, MADV_DONTFORK);
    return copy;
}

static void *control_thread(void *arg)
{
    int lfd = (int)(long)arg;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    for (;;) {
        char line[32];
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        ssize_t n = read(c, line, sizeof(line) - 1);
        if (n > 0 && strncmp(line, "fork", 4) == 0) {
            pid_t copy = freeze_copy();
            int len = snprintf(line, sizeof(line), "%d\n", (int)copy);
            (void)!write(c, line, (size_t)len);
            /* The copy lives until the client hangs up (or dies), then it is killed and reaped. */
            while (copy > 0 && read(c, line, sizeof(line)) > 0)
                ;
            if (copy > 0) {
                kill(copy, SIGKILL);
                waitpid(copy, NULL, 0);
            }
        }
        close(c);
    }
}

__attribute__((constructor)) static void memshim_init(void)
{
    const char *mem = getenv("FASTVM_MEMSHIM_PATH");
    const char *path = getenv("FASTVM_MEMSHIM_CTL");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    pthread_t tid;
    int fd;

    const char *nice = getenv("FASTVM_MEMSHIM_NICE");
    const char *nodump = getenv("FASTVM_MEMSHIM_NODUMP");

    if (nodump != NULL && strcmp(nodump, "1") == 0)
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    unsetenv("FASTVM_MEMSHIM_NODUMP");

    /* Set here, before QEMU creates a thread, so that every thread inherits it. */
    if (nice != NULL)
        setpriority(PRIO_PROCESS, 0, atoi(nice));
    unsetenv("FASTVM_MEMSHIM_NICE");
    if (mem != NULL && strlen(mem) < sizeof(target))
        strcpy(target, mem);
    if (path != NULL && strlen(path) < sizeof(sa.sun_path))
        strcpy(sa.sun_path, path);
    unsetenv("FASTVM_MEMSHIM_PATH");
    unsetenv("FASTVM_MEMSHIM_CTL");
    unsetenv("LD_PRELOAD");
    path = sa.sun_path;
    if (path[0] == '\0')
        return;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0 ||
        pthread_create(&tid, NULL, control_thread, (void *)(long)fd) != 0) {
        close(fd);
        return;
    }
    pthread_detach(tid);
}

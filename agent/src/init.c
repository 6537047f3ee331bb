#include "init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* A directory is a mount point if it lives on another device than its parent (or is /). */
static int is_mountpoint(const char *path)
{
	char parent[PATH_MAX];
	struct stat a, b;

	snprintf(parent, sizeof(parent), "%s/..", path);
	if (stat(path, &a) < 0 || stat(parent, &b) < 0)
		return 0;
	return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static void mount_fs(const char *source, const char *target, const char *type, unsigned long flags,
		     const char *data)
{
	if (ensure_dir(target, 0755) < 0) {
		agent_log("mkdir %s: %s", target, strerror(errno));
		return;
	}
	/* Already mounted (the kernel mounts devtmpfs itself with CONFIG_DEVTMPFS_MOUNT). */
	if (is_mountpoint(target))
		return;
	if (mount(source, target, type, flags, data) < 0 && errno != EBUSY)
		agent_log("mount %s on %s: %s", type, target, strerror(errno));
}

static void make_symlink(const char *target, const char *path)
{
	struct stat st;

	if (lstat(path, &st) == 0)
		return;
	if (symlink(target, path) < 0 && errno != EEXIST)
		agent_log("symlink %s: %s", path, strerror(errno));
}

static void loopback_up(void)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		agent_log("loopback: socket: %s", strerror(errno));
		return;
	}
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
		agent_log("loopback: SIOCGIFFLAGS: %s", strerror(errno));
	} else if (!(ifr.ifr_flags & IFF_UP)) {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
			agent_log("loopback: SIOCSIFFLAGS: %s", strerror(errno));
	}
	close(fd);
}

static void hostname_from_file(void)
{
	char name[256];
	ssize_t n = read_small_file("/etc/hostname", name, sizeof(name));
	size_t len;

	if (n <= 0)
		return;
	len = strcspn(name, " \t\r\n");
	if (len == 0 || len > 64)
		return;
	if (sethostname(name, len) < 0)
		agent_log("sethostname: %s", strerror(errno));
}

/*
 * The identity files a restored VM rewrites on every launch (/etc/hostname, /etc/hosts,
 * /etc/machine-id) are symlinks into /run/fastvm in the image: tmpfs writes cost far less than
 * ext4's journalled ones, which matters under emulation. Seed them from the image's defaults.
 */
static void seed_identity_files(void)
{
	static const char *const names[] = {"hostname", "hosts", "machine-id"};
	char src[128], dst[128], data[4096];

	if (ensure_dir("/run/fastvm", 0755) < 0)
		return;
	for (size_t i = 0; i < ARRAY_LEN(names); i++) {
		snprintf(src, sizeof(src), "/usr/local/share/fastvm/%s", names[i]);
		snprintf(dst, sizeof(dst), "/run/fastvm/%s", names[i]);
		if (access(dst, F_OK) == 0)
			continue;
		ssize_t n = read_small_file(src, data, sizeof(data));
		if (n >= 0 && write_file_atomic(dst, data, (size_t)n, 0644) < 0)
			agent_log("seed %s: %s", dst, strerror(errno));
	}
}

/* Inherited descriptors (a test harness's IPC channel, say) must not leak into commands. */
static void cloexec_inherited_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *de;

	if (!dir)
		return;
	while ((de = readdir(dir)) != NULL) {
		int fd = atoi(de->d_name);

		if (fd > STDERR_FILENO && fd != dirfd(dir))
			(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
	}
	closedir(dir);
}

void ensure_std_fds(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		int n;

		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		/* The lowest free descriptor is fd itself, since the ones below are open. */
		n = open("/dev/null", O_RDWR);
		if (n < 0)
			n = open("/dev/console", O_RDWR | O_NOCTTY);
		if (n >= 0 && n != fd) {
			dup2(n, fd);
			close(n);
		}
	}
	cloexec_inherited_fds();
}

void init_system(void)
{
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;

	umask(022);
	mount_fs("proc", "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL);
	mount_fs("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL);
	mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	ensure_std_fds();
	mount_fs("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		 "newinstance,ptmxmode=0666,mode=620,gid=5");
	make_symlink("pts/ptmx", "/dev/ptmx");
	/* What udev/systemd would provide; bash process substitution needs /dev/fd. */
	make_symlink("/proc/self/fd", "/dev/fd");
	make_symlink("/proc/self/fd/0", "/dev/stdin");
	make_symlink("/proc/self/fd/1", "/dev/stdout");
	make_symlink("/proc/self/fd/2", "/dev/stderr");
	mount_fs("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777");
	mount_fs("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755");
	mount_fs("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777");
	mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_nodev | MS_NOEXEC, NULL);
	loopback_up();
	seed_identity_files();
	hostname_from_file();
}

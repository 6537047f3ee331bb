/*
 * What the agent does as PID 1 before serving: the mounts a Debian userland expects, loopback,
 * and the hostname. Every step is best effort: a failure is logged and boot continues.
 */
#ifndef FASTVM_INIT_H
#define FASTVM_INIT_H

/* Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp, /sys/fs/cgroup; brings up lo; sets the
 * hostname from /etc/hostname. */
void init_system(void);

/* Makes sure descriptors 0, 1 and 2 are open (on /dev/null if need be), so that no pipe or socket
 * the agent opens later can land on them, and marks every other inherited descriptor
 * close-on-exec. */
void ensure_std_fds(void);

#endif

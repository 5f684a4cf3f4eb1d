/* socktrace: an LD_PRELOAD library that counts every socket-related libc call of a process, by
 * call and detail (socket domain/type, setsockopt level/option, ioctl request, fcntl command,
 * syscall number), in time buckets, for the Onload-readiness test (tests/test_onload_ready.py).
 *
 * Each process (and each forked child) maps its own file SOCKTRACE_DIR/<pid>.trace:
 *
 *   header, 1024 bytes                 keys, MAX_KEYS x 48 bytes              counts
 *   +-------+-----+-----+------+----+  +-------+-------+---------+-------+  +-----------------------+
 *   | magic | pid | t0  | bucket| cmd|  | state | call  | detail  | name  |  | u32 [MAX_KEYS][BUCKETS]|
 *   | u32   | u32 | u64 | ns u64| 512|  | u32   | u32   | i64     | 32    |  +-----------------------+
 *   +-------+-----+-----+------+----+  +-------+-------+---------+-------+
 *
 * t0 is CLOCK_MONOTONIC at start; bucket b counts calls in [t0 + b*bucket_ns, t0 + (b+1)*bucket_ns).
 * The file is a shared mapping: the counts survive any way the process ends (even _exit).
 * Every call goes on to the next definition (RTLD_NEXT): the C library, or Onload if loaded after.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x5453574dU          /* "MWST" */
#define HEADER 1024
#define MAX_KEYS 512
#define BUCKETS 2400
#define BUCKET_NS 250000000ULL    /* 250 ms: 10 minutes in all */

struct key { uint32_t state; uint32_t call; int64_t detail; char name[32]; };
struct head { uint32_t magic; uint32_t pid; uint64_t t0; uint64_t bucket_ns; uint32_t max_keys;
              uint32_t buckets; char cmdline[512]; };

static char *map;
static size_t map_size;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);       /* vDSO: no system call */
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void open_trace(void) {
    const char *dir = getenv("SOCKTRACE_DIR");
    if (!dir) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%d.trace", dir, (int)getpid());
    map_size = HEADER + MAX_KEYS * sizeof(struct key) + (size_t)MAX_KEYS * BUCKETS * 4;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (ftruncate(fd, (off_t)map_size) != 0) { close(fd); return; }
    char *m = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return;
    struct head *h = (struct head *)m;
    h->pid = (uint32_t)getpid();
    h->t0 = now_ns();
    h->bucket_ns = BUCKET_NS;
    h->max_keys = MAX_KEYS;
    h->buckets = BUCKETS;
    int cfd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (cfd >= 0) {
        ssize_t n = read(cfd, h->cmdline, sizeof h->cmdline - 1);
        for (ssize_t i = 0; i < n; i++) if (!h->cmdline[i]) h->cmdline[i] = ' ';
        close(cfd);
    }
    __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
    map = m;
}

static void after_fork_child(void) {
    if (map) { munmap(map, map_size); map = NULL; }   /* the parent's file is the parent's */
    open_trace();
}

__attribute__((constructor)) static void init(void) {
    open_trace();
    pthread_atfork(NULL, NULL, after_fork_child);
}

static void count(uint32_t call, const char *name, int64_t detail) {
    char *m = map;
    if (!m) return;
    struct head *h = (struct head *)m;
    struct key *keys = (struct key *)(m + HEADER);
    uint32_t *counts = (uint32_t *)(m + HEADER + MAX_KEYS * sizeof(struct key));
    uint64_t b = (now_ns() - h->t0) / BUCKET_NS;
    if (b >= BUCKETS) b = BUCKETS - 1;
    uint32_t slot = (uint32_t)((call * 2654435761U) ^ (uint64_t)detail) % MAX_KEYS;
    for (int probe = 0; probe < MAX_KEYS; probe++, slot = (slot + 1) % MAX_KEYS) {
        struct key *k = &keys[slot];
        uint32_t st = __atomic_load_n(&k->state, __ATOMIC_ACQUIRE);
        if (st == 0) {
            uint32_t expected = 0;
            if (__atomic_compare_exchange_n(&k->state, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                k->call = call;
                k->detail = detail;
                strncpy(k->name, name, sizeof k->name - 1);
                __atomic_store_n(&k->state, 2, __ATOMIC_RELEASE);
                st = 2;
            } else {
                st = expected;
            }
        }
        while (st == 1) st = __atomic_load_n(&k->state, __ATOMIC_ACQUIRE);
        if (k->call == call && k->detail == detail) {
            __atomic_fetch_add(&counts[(size_t)slot * BUCKETS + b], 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

#define NEXT(ret, name, params) \
    static ret (*real_##name) params; \
    if (!real_##name) real_##name = (ret (*) params)dlsym(RTLD_NEXT, #name)

enum { C_SOCKET = 1, C_SOCKETPAIR, C_BIND, C_CONNECT, C_LISTEN, C_ACCEPT, C_ACCEPT4, C_SETSOCKOPT,
       C_GETSOCKOPT, C_SEND, C_SENDTO, C_SENDMSG, C_SENDMMSG, C_RECV, C_RECVFROM, C_RECVMSG, C_RECVMMSG,
       C_POLL, C_PPOLL, C_SELECT, C_PSELECT, C_EPOLL_CREATE, C_EPOLL_CREATE1, C_EPOLL_CTL, C_EPOLL_WAIT,
       C_EPOLL_PWAIT, C_IOCTL, C_FCNTL, C_SYSCALL, C_RECV_CHK, C_RECVFROM_CHK, C_POLL_CHK, C_PPOLL_CHK };

int socket(int domain, int type, int protocol) {
    NEXT(int, socket, (int, int, int));
    count(C_SOCKET, "socket", ((int64_t)domain << 16) | (type & 0xff));
    return real_socket(domain, type, protocol);
}
int socketpair(int domain, int type, int protocol, int sv[2]) {
    NEXT(int, socketpair, (int, int, int, int *));
    count(C_SOCKETPAIR, "socketpair", ((int64_t)domain << 16) | (type & 0xff));
    return real_socketpair(domain, type, protocol, sv);
}
int bind(int fd, const struct sockaddr *a, socklen_t l) {
    NEXT(int, bind, (int, const struct sockaddr *, socklen_t));
    count(C_BIND, "bind", a ? a->sa_family : -1);
    return real_bind(fd, a, l);
}
int connect(int fd, const struct sockaddr *a, socklen_t l) {
    NEXT(int, connect, (int, const struct sockaddr *, socklen_t));
    count(C_CONNECT, "connect", a ? a->sa_family : -1);
    return real_connect(fd, a, l);
}
int listen(int fd, int backlog) {
    NEXT(int, listen, (int, int));
    count(C_LISTEN, "listen", 0);
    return real_listen(fd, backlog);
}
int accept(int fd, struct sockaddr *a, socklen_t *l) {
    NEXT(int, accept, (int, struct sockaddr *, socklen_t *));
    count(C_ACCEPT, "accept", 0);
    return real_accept(fd, a, l);
}
int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags) {
    NEXT(int, accept4, (int, struct sockaddr *, socklen_t *, int));
    count(C_ACCEPT4, "accept4", 0);
    return real_accept4(fd, a, l, flags);
}
int setsockopt(int fd, int level, int opt, const void *v, socklen_t l) {
    NEXT(int, setsockopt, (int, int, int, const void *, socklen_t));
    count(C_SETSOCKOPT, "setsockopt", ((int64_t)level << 16) | opt);
    return real_setsockopt(fd, level, opt, v, l);
}
int getsockopt(int fd, int level, int opt, void *v, socklen_t *l) {
    NEXT(int, getsockopt, (int, int, int, void *, socklen_t *));
    count(C_GETSOCKOPT, "getsockopt", ((int64_t)level << 16) | opt);
    return real_getsockopt(fd, level, opt, v, l);
}
ssize_t send(int fd, const void *b, size_t n, int flags) {
    NEXT(ssize_t, send, (int, const void *, size_t, int));
    count(C_SEND, "send", 0);
    return real_send(fd, b, n, flags);
}
ssize_t sendto(int fd, const void *b, size_t n, int flags, const struct sockaddr *a, socklen_t l) {
    NEXT(ssize_t, sendto, (int, const void *, size_t, int, const struct sockaddr *, socklen_t));
    count(C_SENDTO, "sendto", 0);
    return real_sendto(fd, b, n, flags, a, l);
}
ssize_t sendmsg(int fd, const struct msghdr *m, int flags) {
    NEXT(ssize_t, sendmsg, (int, const struct msghdr *, int));
    count(C_SENDMSG, "sendmsg", 0);
    return real_sendmsg(fd, m, flags);
}
int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags) {
    NEXT(int, sendmmsg, (int, struct mmsghdr *, unsigned int, int));
    count(C_SENDMMSG, "sendmmsg", 0);
    return real_sendmmsg(fd, v, n, flags);
}
ssize_t recv(int fd, void *b, size_t n, int flags) {
    NEXT(ssize_t, recv, (int, void *, size_t, int));
    count(C_RECV, "recv", 0);
    return real_recv(fd, b, n, flags);
}
ssize_t recvfrom(int fd, void *b, size_t n, int flags, struct sockaddr *a, socklen_t *l) {
    NEXT(ssize_t, recvfrom, (int, void *, size_t, int, struct sockaddr *, socklen_t *));
    count(C_RECVFROM, "recvfrom", 0);
    return real_recvfrom(fd, b, n, flags, a, l);
}
ssize_t recvmsg(int fd, struct msghdr *m, int flags) {
    NEXT(ssize_t, recvmsg, (int, struct msghdr *, int));
    count(C_RECVMSG, "recvmsg", 0);
    return real_recvmsg(fd, m, flags);
}
int recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags, struct timespec *t) {
    NEXT(int, recvmmsg, (int, struct mmsghdr *, unsigned int, int, struct timespec *));
    count(C_RECVMMSG, "recvmmsg", 0);
    return real_recvmmsg(fd, v, n, flags, t);
}
ssize_t __recv_chk(int fd, void *b, size_t n, size_t bl, int flags) {
    NEXT(ssize_t, __recv_chk, (int, void *, size_t, size_t, int));
    count(C_RECV_CHK, "__recv_chk", 0);
    return real___recv_chk(fd, b, n, bl, flags);
}
ssize_t __recvfrom_chk(int fd, void *b, size_t n, size_t bl, int flags, struct sockaddr *a, socklen_t *l) {
    NEXT(ssize_t, __recvfrom_chk, (int, void *, size_t, size_t, int, struct sockaddr *, socklen_t *));
    count(C_RECVFROM_CHK, "__recvfrom_chk", 0);
    return real___recvfrom_chk(fd, b, n, bl, flags, a, l);
}
int poll(struct pollfd *f, nfds_t n, int t) {
    NEXT(int, poll, (struct pollfd *, nfds_t, int));
    count(C_POLL, "poll", 0);
    return real_poll(f, n, t);
}
int __poll_chk(struct pollfd *f, nfds_t n, int t, size_t fl) {
    NEXT(int, __poll_chk, (struct pollfd *, nfds_t, int, size_t));
    count(C_POLL_CHK, "__poll_chk", 0);
    return real___poll_chk(f, n, t, fl);
}
int ppoll(struct pollfd *f, nfds_t n, const struct timespec *t, const sigset_t *s) {
    NEXT(int, ppoll, (struct pollfd *, nfds_t, const struct timespec *, const sigset_t *));
    count(C_PPOLL, "ppoll", 0);
    return real_ppoll(f, n, t, s);
}
int __ppoll_chk(struct pollfd *f, nfds_t n, const struct timespec *t, const sigset_t *s, size_t fl) {
    NEXT(int, __ppoll_chk, (struct pollfd *, nfds_t, const struct timespec *, const sigset_t *, size_t));
    count(C_PPOLL_CHK, "__ppoll_chk", 0);
    return real___ppoll_chk(f, n, t, s, fl);
}
int select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *t) {
    NEXT(int, select, (int, fd_set *, fd_set *, fd_set *, struct timeval *));
    count(C_SELECT, "select", 0);
    return real_select(n, r, w, e, t);
}
int pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t, const sigset_t *s) {
    NEXT(int, pselect, (int, fd_set *, fd_set *, fd_set *, const struct timespec *, const sigset_t *));
    count(C_PSELECT, "pselect", 0);
    return real_pselect(n, r, w, e, t, s);
}
int epoll_create(int size) {
    NEXT(int, epoll_create, (int));
    count(C_EPOLL_CREATE, "epoll_create", 0);
    return real_epoll_create(size);
}
int epoll_create1(int flags) {
    NEXT(int, epoll_create1, (int));
    count(C_EPOLL_CREATE1, "epoll_create1", 0);
    return real_epoll_create1(flags);
}
int epoll_ctl(int ep, int op, int fd, struct epoll_event *ev) {
    NEXT(int, epoll_ctl, (int, int, int, struct epoll_event *));
    count(C_EPOLL_CTL, "epoll_ctl", op);
    return real_epoll_ctl(ep, op, fd, ev);
}
int epoll_wait(int ep, struct epoll_event *ev, int n, int t) {
    NEXT(int, epoll_wait, (int, struct epoll_event *, int, int));
    count(C_EPOLL_WAIT, "epoll_wait", 0);
    return real_epoll_wait(ep, ev, n, t);
}
int epoll_pwait(int ep, struct epoll_event *ev, int n, int t, const sigset_t *s) {
    NEXT(int, epoll_pwait, (int, struct epoll_event *, int, int, const sigset_t *));
    count(C_EPOLL_PWAIT, "epoll_pwait", 0);
    return real_epoll_pwait(ep, ev, n, t, s);
}
int ioctl(int fd, unsigned long req, ...) {
    NEXT(int, ioctl, (int, unsigned long, void *));
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    count(C_IOCTL, "ioctl", (int64_t)req);
    return real_ioctl(fd, req, arg);
}
static int do_fcntl(const char *sym, int fd, int cmd, void *arg) {
    static int (*real_fcntl)(int, int, void *);
    static int (*real_fcntl64)(int, int, void *);
    int (**slot)(int, int, void *) = sym[5] ? &real_fcntl64 : &real_fcntl;
    if (!*slot) *slot = (int (*)(int, int, void *))dlsym(RTLD_NEXT, sym);
    count(C_FCNTL, "fcntl", cmd);
    return (*slot)(fd, cmd, arg);
}
int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return do_fcntl("fcntl", fd, cmd, arg);
}
int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return do_fcntl("fcntl64", fd, cmd, arg);
}
long syscall(long nr, ...) {
    NEXT(long, syscall, (long, long, long, long, long, long, long));
    va_list ap;
    va_start(ap, nr);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    count(C_SYSCALL, "syscall", nr);
    return real_syscall(nr, a1, a2, a3, a4, a5, a6);
}

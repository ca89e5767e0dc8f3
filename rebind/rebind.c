/*
 * rebind.so - an LD_PRELOAD shim that moves exactly one listener of a wrapped
 * program to a free loopback port and tells websockify where it went.
 *
 * websockify starts the program with this library preloaded and with:
 *
 *   WEBSOCKIFY_REBIND_REPORT  a file websockify created empty: the shim's shared
 *                             state and the report websockify reads.  Without
 *                             it (or once it is gone) the shim does nothing,
 *                             unless WEBSOCKIFY_REBIND_TO is set.
 *   WEBSOCKIFY_REBIND_PORTS   "*": the first TCP listener on a non-zero port is
 *                             the program's; a number: the listener on that port.
 *   WEBSOCKIFY_REBIND_TO      the loopback port to move to instead of a free one
 *                             (the `rebind OLD_PORT NEW_PORT COMMAND` command);
 *                             without a report file, every listener on the
 *                             wanted port moves there and nothing is shared.
 *   WEBSOCKIFY_REBIND_UNIX    with --unix-target: the unix socket path whose
 *                             listener is reported ("<pid> unix <path>"),
 *                             never moved.
 *
 * Why at listen() and not at bind(): a bind() alone may be a client choosing its
 * source port, which must stay where it asked.  So bind() goes to the address
 * asked for, and a socket bound to a port that may be the program's is noted
 * by inode (every dup/dup2/F_DUPFD copy of its descriptor, of any number, finds
 * it).  When that socket listen()s and is the program's, the shim swaps a fresh
 * socket bound to 127.0.0.1:0 or [::1]:0 in under the same descriptor (dup3),
 * with the program's socket options and flags copied, and listens on it; the
 * moved port is read back from the socket (getsockname).  A socket bound to
 * port 0, or never bound, is never the program's.
 *
 * Only when the real bind() fails with EADDRINUSE (websockify itself listens on
 * that port, upstream's form, or another program does) is the socket moved at
 * bind() already; a connect() from it then fails with EADDRINUSE, as the real
 * bind() would have.
 *
 * The report file is the state all processes of the tree share, whenever they
 * were exec'd: under flock(), the first process to listen on a wanted port
 * appends "<pid> tcp <original port> <127.0.0.1|::1> <port> <socket inode>".
 * From then on nothing else is moved, except the same port in the other address
 * family by the same process (dual-stack servers such as Xtigervnc).  Other
 * binds to the original port fail with EADDRINUSE while that socket still
 * listens (checked by inode in /proc/net/tcp{,6}, so a reused pid cannot fake
 * it): wrappers that probe "is my server up?" by binding its port, as TigerVNC's
 * vncserver does, see the server they started.  A further SO_REUSEPORT socket of
 * the same process joins the moved one on its loopback port instead, as the
 * kernel would have let it share the original port.
 *
 * Everything else - other ports, UDP, unix sockets, port 0 - goes straight to
 * the real call.  The caller's errno changes only when a call fails.  The real
 * symbols are resolved once; a dlsym() that finds the shim itself again fails
 * the calls with ENOSYS instead of recursing.  Nothing is printed unless built
 * with -DREBIND_DEBUG (make rebind REBIND_DEBUG=1).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef REBIND_DEBUG
#define DEBUG(...) fprintf(stderr, "rebind.so: " __VA_ARGS__)
#else
#define DEBUG(...) ((void)0)
#endif

/* Report lines read at most: only the program's listener is ever reported. */
#define MAX_ENTRIES 32
/* Binds to the program's port remembered until their listen() or connect(). */
#define PENDING_BINDS 256

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
/* Set while this thread resolves the real symbols: a call back into the shim
 * from dlsym() must not wait on init_once, which it is inside of. */
static __thread int resolving;
static bind_fn real_bind;
static listen_fn real_listen;
static connect_fn real_connect;

static const char *report_path;
static int any_port;
static unsigned short wanted_port;
/* Where moved listeners go on loopback (host order); 0: a port the kernel picks. */
static unsigned short moved_to;
static char unix_path[PATH_MAX]; /* absolute: may be longer than a sun_path */

/* One line of the report file. */
struct entry {
    long pid;
    int is_unix;
    unsigned short original;
    int family;
    unsigned short port;
    unsigned long inode;
};

struct state {
    size_t count;
    struct entry entries[MAX_ENTRIES];
};

/* Held while this process has the report file open: a fork() waits for it, so no
 * child inherits a descriptor of the file with the flock() still on it. */
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

/* Sockets bound to a port that may be the program's, keyed by inode (so every
 * copy of the descriptor finds them); the oldest entry is overwritten. */
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pending {
    dev_t dev;
    ino_t ino;
    unsigned short original; /* 0: a free entry */
    int moved;               /* the port was busy: moved to loopback at bind() */
} pending[PENDING_BINDS];
static size_t pending_next;
static int pending_used;

static void before_fork(void)
{
    pthread_mutex_lock(&report_lock);
    pthread_mutex_lock(&pending_lock);
}

static void after_fork(void)
{
    pthread_mutex_unlock(&pending_lock);
    pthread_mutex_unlock(&report_lock);
}

static void init(void)
{
    const char *spec = getenv("WEBSOCKIFY_REBIND_PORTS");
    const char *to = getenv("WEBSOCKIFY_REBIND_TO");
    const char *unix_spec = getenv("WEBSOCKIFY_REBIND_UNIX");

    resolving = 1;
    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    real_listen = (listen_fn)dlsym(RTLD_NEXT, "listen");
    real_connect = (connect_fn)dlsym(RTLD_NEXT, "connect");
    resolving = 0;
    /* Not loaded through LD_PRELOAD (linked in, say): RTLD_NEXT may find the
     * shim itself again, and calling that would recurse forever. */
    if (real_bind == bind || real_listen == listen || real_connect == connect)
        real_bind = NULL, real_listen = NULL, real_connect = NULL;
    pthread_atfork(before_fork, after_fork, after_fork);
    report_path = getenv("WEBSOCKIFY_REBIND_REPORT");
    if (report_path != NULL && report_path[0] == '\0')
        report_path = NULL;
    if (spec != NULL && strcmp(spec, "*") == 0) {
        any_port = 1;
    } else if (spec != NULL && spec[0] != '\0') {
        char *end;
        unsigned long port = strtoul(spec, &end, 10);
        if (*end == '\0' && port > 0 && port < 65536)
            wanted_port = (unsigned short)port;
    }
    if (to != NULL && to[0] != '\0') {
        char *end;
        unsigned long port = strtoul(to, &end, 10);
        if (*end == '\0' && port > 0 && port < 65536)
            moved_to = (unsigned short)port;
    }
    if (unix_spec != NULL && unix_spec[0] == '/' && strlen(unix_spec) < sizeof(unix_path))
        strcpy(unix_path, unix_spec);
    DEBUG("ports=%s to=%u unix=%s report=%s\n", spec ? spec : "(none)", moved_to, unix_path,
          report_path ? report_path : "(none)");
}

__attribute__((constructor)) static void load(void)
{
    pthread_once(&init_once, init);
}

/* Resolve once; 0 when the real calls are usable (errno untouched). */
static int ready(void)
{
    if (resolving)
        return -1;
    pthread_once(&init_once, init);
    return real_bind != NULL && real_listen != NULL && real_connect != NULL ? 0 : -1;
}

static int is_tcp(int fd)
{
    int value;
    socklen_t len = sizeof(value);

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &len) != 0 || value != SOCK_STREAM)
        return 0;
    len = sizeof(value);
    return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &value, &len) == 0 && value == IPPROTO_TCP;
}

/* The port of an AF_INET/AF_INET6 address in host order, 0 for anything else. */
static unsigned short inet_port(const struct sockaddr *addr, socklen_t len)
{
    if (addr == NULL || len < (socklen_t)sizeof(sa_family_t))
        return 0;
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
        return ntohs(((const struct sockaddr_in *)addr)->sin_port);
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6))
        return ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
    return 0;
}

static int port_is_wanted(unsigned short port)
{
    return port != 0 && (any_port || port == wanted_port);
}

/* --- the report file: shared state of the whole tree -------------------------- */

/* The report file locked with `how` (LOCK_SH/LOCK_EX), or -1 when there is none.
 * Every descriptor it returns goes back through close_report(). */
static int open_report(int how)
{
    int fd;

    if (report_path == NULL)
        return -1;
    pthread_mutex_lock(&report_lock);
    fd = open(report_path, O_RDWR | O_APPEND | O_CLOEXEC);
    while (fd >= 0 && flock(fd, how) != 0) {
        if (errno != EINTR) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0)
        pthread_mutex_unlock(&report_lock);
    return fd;
}

/* load_state() for the `rebind` command: no report file, nothing shared. */
#define STATELESS (-2)

static void close_report(int fd)
{
    if (fd < 0)
        return;
    close(fd);
    pthread_mutex_unlock(&report_lock);
}

static void read_state(int fd, struct state *state)
{
    char buf[8192];
    char *line, *rest;
    ssize_t n;

    state->count = 0;
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return;
    buf[n] = '\0';
    for (line = strtok_r(buf, "\n", &rest); line != NULL && state->count < MAX_ENTRIES;
         line = strtok_r(NULL, "\n", &rest)) {
        struct entry *e = &state->entries[state->count];
        char host[48];
        int used = 0;

        memset(e, 0, sizeof(*e));
        if (sscanf(line, "%ld tcp %hu %47s %hu %lu", &e->pid, &e->original, host, &e->port,
                   &e->inode) == 5) {
            e->family = strchr(host, ':') != NULL ? AF_INET6 : AF_INET;
        } else if (sscanf(line, "%ld unix %n", &e->pid, &used) == 1 && used > 0) {
            e->is_unix = 1;
        } else {
            continue;
        }
        state->count++;
    }
}

/* The tree's state, read under flock() `how`.  Returns the report's descriptor
 * (for close_report), STATELESS for the `rebind` command, or -1 when the shim has
 * nothing to do. */
static int load_state(int how, struct state *state)
{
    int report;

    state->count = 0;
    if (report_path == NULL)
        return moved_to != 0 ? STATELESS : -1;
    report = open_report(how);
    if (report >= 0)
        read_state(report, state);
    return report;
}

/* Whether a socket with this inode listens on this loopback port right now. */
static int still_listening(const struct entry *e)
{
    char line[512];
    FILE *table = fopen(e->family == AF_INET6 ? "/proc/net/tcp6" : "/proc/net/tcp", "re");
    int found = 0;

    if (table == NULL)
        return 1; /* cannot tell: keep the program's port taken */
    while (!found && fgets(line, sizeof(line), table) != NULL) {
        unsigned int port, st;
        unsigned long inode;

        if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x %*x:%*x %*x:%*x %*x %*u %*u %lu",
                   &port, &st, &inode) == 3)
            found = port == e->port && st == 0x0A && inode == e->inode;
    }
    fclose(table);
    return found;
}

/* The first TCP report line: the program's listener; NULL while there is none. */
static const struct entry *chosen(const struct state *state)
{
    size_t i;

    for (i = 0; i < state->count; i++)
        if (!state->entries[i].is_unix)
            return &state->entries[i];
    return NULL;
}

/* Whether the program's port counts as taken for a bind in `family` by us:
 * a reported socket on it still listens, in our family or in another process. */
static int port_taken(const struct state *state, unsigned short original, int family)
{
    size_t i;

    for (i = 0; i < state->count; i++) {
        const struct entry *e = &state->entries[i];
        if (e->is_unix || e->original != original)
            continue;
        if ((e->family == family || e->pid != (long)getpid()) && still_listening(e))
            return 1;
    }
    return 0;
}

/* Whether a listener on `original` in `family` is the program's to move now. */
static int may_move(const struct state *state, unsigned short original, int family)
{
    const struct entry *first = chosen(state);

    if (first == NULL)
        return 1;
    return first->original == original && first->pid == (long)getpid() &&
           !port_taken(state, original, family);
}

static void append_line(int report, const char *line, int n)
{
    if (n <= 0 || write(report, line, (size_t)n) != n)
        DEBUG("short write to %s\n", report_path);
}

static void report_tcp(int report, int fd, unsigned short original)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    struct stat st;
    char line[128];
    unsigned short port;
    const char *host;

    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0 || fstat(fd, &st) != 0)
        return;
    if (local.ss_family == AF_INET6) {
        host = "::1";
        port = ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
    } else {
        host = "127.0.0.1";
        port = ntohs(((struct sockaddr_in *)&local)->sin_port);
    }
    DEBUG("pid %d: port %u listens on %s port %u\n", (int)getpid(), original, host, port);
    append_line(report, line, snprintf(line, sizeof(line), "%ld tcp %u %s %u %lu\n",
                                       (long)getpid(), original, host, port,
                                       (unsigned long)st.st_ino));
}

/* --- binds that may become the program's listener ------------------------------ */

static void pending_add(int fd, unsigned short original, int moved)
{
    struct stat st;

    if (fstat(fd, &st) != 0)
        return;
    pthread_mutex_lock(&pending_lock);
    pending[pending_next].dev = st.st_dev;
    pending[pending_next].ino = st.st_ino;
    pending[pending_next].original = original;
    pending[pending_next].moved = moved;
    pending_next = (pending_next + 1) % PENDING_BINDS;
    __atomic_store_n(&pending_used, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&pending_lock);
}

/* The pending bind of the socket behind `fd`, forgotten once taken: 0 if none. */
static int pending_take(int fd, struct pending *out)
{
    struct stat st;
    size_t i;
    int found = 0;

    if (!__atomic_load_n(&pending_used, __ATOMIC_ACQUIRE) || fstat(fd, &st) != 0)
        return 0;
    pthread_mutex_lock(&pending_lock);
    for (i = 0; i < PENDING_BINDS && !found; i++) {
        if (pending[i].original != 0 && pending[i].ino == st.st_ino &&
            pending[i].dev == st.st_dev) {
            *out = pending[i];
            pending[i].original = 0;
            found = 1;
        }
    }
    pthread_mutex_unlock(&pending_lock);
    return found;
}

/* Bind to 127.0.0.1:port or [::1]:port (0: the kernel picks a free one). */
static int bind_loopback(int fd, int family, unsigned short port)
{
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;

    if (family == AF_INET6) {
        memset(&v6, 0, sizeof(v6));
        v6.sin6_family = AF_INET6;
        v6.sin6_addr = in6addr_loopback;
        v6.sin6_port = htons(port);
        return real_bind(fd, (const struct sockaddr *)&v6, sizeof(v6));
    }
    memset(&v4, 0, sizeof(v4));
    v4.sin_family = AF_INET;
    v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    v4.sin_port = htons(port);
    return real_bind(fd, (const struct sockaddr *)&v4, sizeof(v4));
}

/* --- the swap at listen() ------------------------------------------------------ */

/* Options the program may have set on its listener that matter once it is moved;
 * each is copied only where it differs from a fresh socket's default. */
static const struct {
    int level, name;
    int halve; /* the kernel reports twice the size that was set */
} copied_options[] = {
    {SOL_SOCKET, SO_REUSEADDR, 0},     {SOL_SOCKET, SO_REUSEPORT, 0},
    {SOL_SOCKET, SO_KEEPALIVE, 0},     {SOL_SOCKET, SO_OOBINLINE, 0},
    {SOL_SOCKET, SO_RCVBUF, 1},        {SOL_SOCKET, SO_SNDBUF, 1},
    {SOL_SOCKET, SO_RCVLOWAT, 0},      {SOL_SOCKET, SO_PRIORITY, 0},
    {SOL_SOCKET, SO_LINGER, 0},        {SOL_SOCKET, SO_RCVTIMEO, 0},
    {SOL_SOCKET, SO_SNDTIMEO, 0},      {IPPROTO_TCP, TCP_NODELAY, 0},
    {IPPROTO_TCP, TCP_KEEPIDLE, 0},    {IPPROTO_TCP, TCP_KEEPINTVL, 0},
    {IPPROTO_TCP, TCP_KEEPCNT, 0},     {IPPROTO_TCP, TCP_DEFER_ACCEPT, 0},
    {IPPROTO_TCP, TCP_FASTOPEN, 0},    {IPPROTO_TCP, TCP_USER_TIMEOUT, 0},
    {IPPROTO_TCP, TCP_NOTSENT_LOWAT, 0},
};

static void copy_options(int from, int to)
{
    size_t i;

    for (i = 0; i < sizeof(copied_options) / sizeof(copied_options[0]); i++) {
        union {
            int i;
            struct linger l;
            struct timeval t;
        } old, fresh;
        socklen_t old_len = sizeof(old), fresh_len = sizeof(fresh);
        int level = copied_options[i].level, name = copied_options[i].name;

        memset(&old, 0, sizeof(old));
        memset(&fresh, 0, sizeof(fresh));
        if (getsockopt(from, level, name, &old, &old_len) != 0 ||
            getsockopt(to, level, name, &fresh, &fresh_len) != 0)
            continue;
        if (old_len == fresh_len && memcmp(&old, &fresh, old_len) == 0)
            continue;
        if (copied_options[i].halve)
            old.i /= 2;
        if (setsockopt(to, level, name, &old, old_len) != 0)
            DEBUG("option %d/%d not copied\n", level, name);
    }
}

/* Put a socket listening on loopback (port moved_to) in place of `fd`; -1 and errno
 * if it cannot be done. */
static int swap_to_loopback(int fd, int family, int backlog)
{
    int fresh, status_flags, fd_flags, failure;

    fresh = socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fresh < 0)
        return -1;
    copy_options(fd, fresh);
    status_flags = fcntl(fd, F_GETFL);
    fd_flags = fcntl(fd, F_GETFD);
    if (status_flags >= 0 && (status_flags & O_NONBLOCK))
        fcntl(fresh, F_SETFL, fcntl(fresh, F_GETFL) | O_NONBLOCK);
    if (bind_loopback(fresh, family, moved_to) != 0 || real_listen(fresh, backlog) != 0 ||
        dup3(fresh, fd, fd_flags >= 0 && (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
        failure = errno;
        close(fresh);
        errno = failure;
        return -1;
    }
    close(fresh);
    return 0;
}

/* --- several SO_REUSEPORT sockets on the program's port --------------------------- */

/* The live report line of this process in `family` that a bind of `fd` to the
 * program's port joins, as the kernel lets SO_REUSEPORT sockets share a port. */
static const struct entry *reuseport_group(const struct state *state, int fd,
                                           unsigned short original, int family)
{
    int reuse = 0;
    socklen_t len = sizeof(reuse);
    size_t i;

    if (getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &reuse, &len) != 0 || !reuse)
        return NULL;
    for (i = 0; i < state->count; i++) {
        const struct entry *e = &state->entries[i];
        if (!e->is_unix && e->original == original && e->family == family &&
            e->pid == (long)getpid() && still_listening(e))
            return e;
    }
    return NULL;
}

/* Bind `fd` next to the moved listener, on its loopback port: the kernel shares
 * new connections among them as it would have on the original port. */
static int join_group(int fd, const struct entry *group, int saved_errno)
{
    int result = bind_loopback(fd, group->family, group->port);

    if (result == 0) {
        DEBUG("pid %d: joins port %u on loopback port %u\n", (int)getpid(), group->original,
              group->port);
        errno = saved_errno;
    }
    return result;
}

/* --- the interposed calls ------------------------------------------------------ */

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    int saved_errno = errno;
    unsigned short port;
    int report, result;
    struct state state;
    const struct entry *first;

    if (ready() != 0) {
        errno = ENOSYS;
        return -1;
    }
    port = inet_port(addr, len);
    if (!port_is_wanted(port) || !is_tcp(fd) || (report = load_state(LOCK_SH, &state)) == -1) {
        errno = saved_errno;
        return real_bind(fd, addr, len);
    }
    close_report(report);
    first = chosen(&state);
    if (first != NULL && port == first->original && port_taken(&state, port, addr->sa_family)) {
        const struct entry *group = reuseport_group(&state, fd, port, addr->sa_family);
        if (group != NULL)
            return join_group(fd, group, saved_errno);
        DEBUG("pid %d: port %u is the program's: in use\n", (int)getpid(), port);
        errno = EADDRINUSE;
        return -1;
    }
    errno = saved_errno;
    result = real_bind(fd, addr, len);
    if (!may_move(&state, port, addr->sa_family))
        return result;
    if (result == 0) {
        /* Where it was asked; listen() decides whether it moves. */
        pending_add(fd, port, 0);
        return 0;
    }
    if (errno != EADDRINUSE)
        return result;
    /* The port is busy (websockify's own, or another program's): were this the
     * program's listener, it could not have it anyway, so it moves now. */
    if (bind_loopback(fd, addr->sa_family, moved_to) != 0) {
        errno = EADDRINUSE;
        return -1;
    }
    DEBUG("pid %d: port %u is busy: bound to loopback\n", (int)getpid(), port);
    pending_add(fd, port, 1);
    errno = saved_errno;
    return 0;
}

static int listen_unix(int fd, int backlog)
{
    struct sockaddr_un local;
    socklen_t len = sizeof(local);
    char path[PATH_MAX + sizeof(local.sun_path)];
    struct state state;
    char line[sizeof(path) + 32];
    int saved_errno = errno, report;

    if (real_listen(fd, backlog) != 0)
        return -1;
    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0 ||
        len <= offsetof(struct sockaddr_un, sun_path) || local.sun_path[0] == '\0') {
        errno = saved_errno;
        return 0;
    }
    local.sun_path[sizeof(local.sun_path) - 1] = '\0';
    if (local.sun_path[0] == '/')
        snprintf(path, sizeof(path), "%s", local.sun_path);
    else if (getcwd(path, PATH_MAX) != NULL)
        snprintf(path + strlen(path), sizeof(path) - strlen(path), "/%s", local.sun_path);
    else
        path[0] = '\0';
    if (strcmp(path, unix_path) == 0 && (report = open_report(LOCK_EX)) >= 0) {
        read_state(report, &state);
        if (state.count == 0) {
            DEBUG("pid %d: listens on %s\n", (int)getpid(), path);
            append_line(report, line,
                        snprintf(line, sizeof(line), "%ld unix %s\n", (long)getpid(), path));
        }
        close_report(report);
    }
    errno = saved_errno;
    return 0;
}

int listen(int fd, int backlog)
{
    int saved_errno = errno;
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    struct pending bound;
    struct state state;
    int report, result;

    if (ready() != 0) {
        errno = ENOSYS;
        return -1;
    }
    if (unix_path[0] != '\0' && getsockname(fd, (struct sockaddr *)&local, &len) == 0 &&
        local.ss_family == AF_UNIX) {
        errno = saved_errno;
        return listen_unix(fd, backlog);
    }
    /* Only a socket bound to a wanted port can be the program's listener: not
     * one bound to port 0, nor one listen() binds to an ephemeral port. */
    if (!pending_take(fd, &bound) || (report = load_state(LOCK_EX, &state)) == -1) {
        errno = saved_errno;
        return real_listen(fd, backlog);
    }
    len = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0 ||
        !may_move(&state, bound.original, local.ss_family)) {
        close_report(report);
        DEBUG("pid %d: port %u is not the program's listener\n", (int)getpid(), bound.original);
        if (bound.moved) {
            /* Moved at bind() for a listener that is not the program's after
             * all: that bind() would have failed. */
            errno = EADDRINUSE;
            return -1;
        }
        errno = saved_errno;
        return real_listen(fd, backlog);
    }
    if (bound.moved)
        result = real_listen(fd, backlog);
    else
        result = swap_to_loopback(fd, local.ss_family, backlog);
    if (result == 0 && report >= 0)
        report_tcp(report, fd, bound.original);
    close_report(report);
    if (result == 0)
        errno = saved_errno;
    return result;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    int saved_errno = errno;
    struct pending bound;

    if (ready() != 0) {
        errno = ENOSYS;
        return -1;
    }
    if (pending_take(fd, &bound) && bound.moved) {
        /* A client that asked for a busy source port: its bind() would have
         * failed, and its connection must not leave from loopback. */
        errno = EADDRINUSE;
        return -1;
    }
    errno = saved_errno;
    return real_connect(fd, addr, len);
}

/*
 * rebind.so - an LD_PRELOAD shim that moves a wrapped program's TCP listener
 * to a free loopback port and tells websockify where it went.
 *
 * websockify starts the program with this library preloaded and with:
 *
 *   WEBSOCKIFY_REBIND_PORTS   "*" (move every TCP bind to a non-zero port) or a
 *                             comma-separated list of the ports to move.
 *   WEBSOCKIFY_REBIND_REPORT  the file the shim appends one line to for every
 *                             moved socket that starts listening:
 *                             "<pid> <original port> <host> <loopback port>\n"
 *   WEBSOCKIFY_REBIND_TO      optional: the loopback port moved binds go to
 *                             instead of a free one (the `rebind` command's NEW_PORT).
 *
 * A moved bind() goes to 127.0.0.1:0 (IPv4) or [::1]:0 (IPv6): the kernel picks
 * a free port, so nothing is guessed and the program cannot collide with
 * websockify's own listener.  The report is written at listen() time, when a
 * connection can succeed, in one write() to a file opened with O_APPEND, so
 * lines of concurrent processes never interleave.
 *
 * The report file also keeps the program's view of its ports true: a moved
 * bind to a port that a live process of the tree already listens on (same
 * family) fails with EADDRINUSE, as the real bind would have.  Wrappers that
 * probe "is my server up yet?" by binding its port (TigerVNC's vncserver does)
 * therefore see the server they started.
 *
 * Everything that is not a TCP socket of family AF_INET/AF_INET6 binding a
 * port on the list goes straight to the real bind()/listen(), untouched.  The
 * caller's errno is kept: it changes only when the real call fails.  The shim
 * prints nothing unless built with -DREBIND_DEBUG (make rebind REBIND_DEBUG=1).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef REBIND_DEBUG
#define DEBUG(...) fprintf(stderr, "rebind.so: " __VA_ARGS__)
#else
#define DEBUG(...) ((void)0)
#endif

#define MAX_PORTS 16
/* Sockets are remembered by descriptor between bind() and listen(); a moved
 * socket whose descriptor is beyond the table is reported at bind() instead. */
#define FD_TABLE 4096

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static bind_fn real_bind;
static listen_fn real_listen;
static const char *report_path;
/* Loopback port moved binds go to (network order); 0: a free one. */
static unsigned short moved_to;
static int move_every_port;
static unsigned short ports[MAX_PORTS];
static size_t port_count;
/* Original port of a moved socket that has not listened yet, 0 for none. */
static unsigned short moved_from[FD_TABLE];

static void parse_ports(const char *spec)
{
    if (strcmp(spec, "*") == 0) {
        move_every_port = 1;
        return;
    }
    while (*spec != '\0' && port_count < MAX_PORTS) {
        char *end;
        unsigned long port = strtoul(spec, &end, 10);
        if (end == spec)
            break;
        if (port > 0 && port < 65536)
            ports[port_count++] = (unsigned short)port;
        spec = (*end == ',') ? end + 1 : end;
    }
}

static void init(void)
{
    const char *spec = getenv("WEBSOCKIFY_REBIND_PORTS");

    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    real_listen = (listen_fn)dlsym(RTLD_NEXT, "listen");
    report_path = getenv("WEBSOCKIFY_REBIND_REPORT");
    if (getenv("WEBSOCKIFY_REBIND_TO") != NULL)
        moved_to = htons((unsigned short)strtoul(getenv("WEBSOCKIFY_REBIND_TO"), NULL, 10));
    if (spec != NULL)
        parse_ports(spec);
    DEBUG("ports=%s report=%s\n", spec ? spec : "(none)", report_path ? report_path : "(none)");
}

static int port_is_moved(unsigned short port)
{
    size_t i;

    if (port == 0)
        return 0;
    if (move_every_port)
        return 1;
    for (i = 0; i < port_count; i++)
        if (ports[i] == port)
            return 1;
    return 0;
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

static int is_tcp(int fd)
{
    int value;
    socklen_t len = sizeof(value);

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &len) != 0 || value != SOCK_STREAM)
        return 0;
    len = sizeof(value);
    return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &value, &len) == 0 && value == IPPROTO_TCP;
}

/* Whether a live process has reported a listener on (family, original port). */
static int moved_port_in_use(int family, unsigned short original)
{
    char buf[8192];
    char *line, *rest;
    ssize_t n;
    int in = -1;

    if (report_path != NULL)
        in = open(report_path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return 0;
    n = read(in, buf, sizeof(buf) - 1);
    close(in);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (line = strtok_r(buf, "\n", &rest); line != NULL; line = strtok_r(NULL, "\n", &rest)) {
        int pid;
        unsigned int port;
        char host[16];

        if (sscanf(line, "%d %u %15s", &pid, &port, host) != 3 || port != original)
            continue;
        if ((strchr(host, ':') != NULL) != (family == AF_INET6))
            continue;
        if (kill(pid, 0) == 0 || errno == EPERM)
            return 1;
    }
    return 0;
}

/* The descriptor no longer holds a moved socket that still has to listen. */
static void forget(int fd)
{
    if (fd >= 0 && fd < FD_TABLE)
        moved_from[fd] = 0;
}

/* Append "<pid> <original port> <host> <loopback port>" if fd is bound to loopback. */
static void report(int fd, unsigned short original)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    const char *host;
    unsigned short port;
    char line[96];
    int n, out;

    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0)
        return;
    if (local.ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)&local;
        if (v4->sin_addr.s_addr != htonl(INADDR_LOOPBACK))
            return;
        host = "127.0.0.1";
        port = ntohs(v4->sin_port);
    } else if (local.ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&local;
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr))
            return;
        host = "::1";
        port = ntohs(v6->sin6_port);
    } else {
        return;
    }
    DEBUG("pid %d: port %u listens on %s port %u\n", (int)getpid(), original, host, port);
    if (report_path == NULL)
        return;
    n = snprintf(line, sizeof(line), "%d %u %s %u\n", (int)getpid(), original, host, port);
    out = open(report_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0)
        return;
    if (write(out, line, (size_t)n) != n)
        DEBUG("short write to %s\n", report_path);
    close(out);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    int saved_errno = errno;
    unsigned short original;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    int result;

    pthread_once(&init_once, init);
    if (real_bind == NULL) {
        errno = ENOSYS;
        return -1;
    }
    original = inet_port(addr, len);
    if (original == 0 || !is_tcp(fd) || !port_is_moved(original)) {
        errno = saved_errno;
        result = real_bind(fd, addr, len);
        /* A successful bind means fd is a fresh socket, not one we moved. */
        if (result == 0)
            forget(fd);
        return result;
    }
    if (moved_port_in_use(addr->sa_family, original)) {
        errno = EADDRINUSE;
        return -1;
    }
    if (addr->sa_family == AF_INET) {
        memset(&v4, 0, sizeof(v4));
        v4.sin_family = AF_INET;
        v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        v4.sin_port = moved_to;
        result = real_bind(fd, (const struct sockaddr *)&v4, sizeof(v4));
    } else {
        memset(&v6, 0, sizeof(v6));
        v6.sin6_family = AF_INET6;
        v6.sin6_addr = in6addr_loopback;
        v6.sin6_port = moved_to;
        result = real_bind(fd, (const struct sockaddr *)&v6, sizeof(v6));
    }
    if (result != 0)
        return result;
    DEBUG("pid %d: moved a bind to port %u to loopback\n", (int)getpid(), original);
    if (fd < FD_TABLE)
        moved_from[fd] = original;
    else
        report(fd, original);
    errno = saved_errno;
    return 0;
}

int listen(int fd, int backlog)
{
    int saved_errno = errno;
    unsigned short original;
    int result;

    pthread_once(&init_once, init);
    if (real_listen == NULL) {
        errno = ENOSYS;
        return -1;
    }
    result = real_listen(fd, backlog);
    if (result != 0 || fd < 0 || fd >= FD_TABLE || moved_from[fd] == 0)
        return result;
    original = moved_from[fd];
    moved_from[fd] = 0;
    report(fd, original);
    errno = saved_errno;
    return 0;
}

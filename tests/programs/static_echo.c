/*
 * A TCP echo server on a fixed port, built with `gcc -static`: a program that
 * LD_PRELOAD cannot reach (as statically linked and Go programs are), for the
 * launcher's test of the error it gives about such a program.
 *
 * Usage: static_echo PORT  (binds 0.0.0.0:PORT, echoes one client at a time)
 */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct sockaddr_in addr;
    char buf[4096];
    int listener, one = 1;

    if (argc != 2)
        return 2;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[1]));
    if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(listener, 8) != 0)
        return 1;
    for (;;) {
        int client = accept(listener, NULL, NULL);
        ssize_t n;

        if (client < 0)
            continue;
        while ((n = read(client, buf, sizeof(buf))) > 0)
            if (write(client, buf, (size_t)n) != n)
                break;
        close(client);
    }
}

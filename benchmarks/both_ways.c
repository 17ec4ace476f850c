/* The shaped link's own ceiling for a swap: TCP sending both ways at once, in C (a thread receives
 * while the main thread sends), with nothing of Python or gRPC. benchmarks/link_ceiling.py builds
 * and runs it in two namespaces; see there.
 *
 *   both_ways serve HOST PORT BYTES DELAY_US
 *       answer each one-byte request with BYTES both ways at once, the reply DELAY_US after the
 *       request came (0: at once)
 *   both_ways client HOST PORT BYTES SWAPS new|kept IDLE_US
 *       SWAPS + 1 swaps (the first not timed), each on a new connection or all on one, IDLE_US
 *       apart; prints each timed swap's seconds, one per line
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static size_t bytes;
static char *out, *in;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void fail(const char *what) {
    perror(what);
    exit(1);
}

static void *receive(void *arg) {
    int fd = *(int *)arg;
    for (size_t got = 0; got < bytes;) {
        ssize_t n = recv(fd, in + got, bytes - got, 0);
        if (n <= 0) fail("recv");
        got += (size_t)n;
    }
    return NULL;
}

static void swap(int fd, useconds_t delay_us) {
    pthread_t reader;
    pthread_create(&reader, NULL, receive, &fd);
    if (delay_us) usleep(delay_us);
    for (size_t sent = 0; sent < bytes;) {
        ssize_t n = send(fd, out + sent, bytes - sent, 0);
        if (n <= 0) fail("send");
        sent += (size_t)n;
    }
    pthread_join(reader, NULL);
}

static int no_delay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: see both_ways.c\n");
        return 2;
    }
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &at.sin_addr) != 1) fail("address");
    bytes = strtoull(argv[4], NULL, 10);
    out = malloc(bytes);
    in = malloc(bytes);
    memset(out, 1, bytes); /* both buffers touched once: no page faults in the timed swaps */
    memset(in, 0, bytes);
    char request = 1;
    if (!strcmp(argv[1], "serve")) {
        int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(listener, (struct sockaddr *)&at, sizeof at) || listen(listener, 16)) fail("listen");
        printf("ready\n");
        fflush(stdout);
        for (;;) {
            int fd = no_delay(accept(listener, NULL, NULL));
            while (recv(fd, &request, 1, MSG_WAITALL) == 1) swap(fd, (useconds_t)atoi(argv[5]));
            close(fd);
        }
    }
    if (argc < 8) return 2;
    int swaps = atoi(argv[5]), kept = !strcmp(argv[6], "kept"), fd = -1;
    useconds_t idle_us = (useconds_t)atoi(argv[7]);
    for (int i = 0; i <= swaps; i++) {
        if (i && idle_us) usleep(idle_us);
        double start = now();
        if (!kept || fd < 0) {
            if (fd >= 0) close(fd);
            fd = no_delay(socket(AF_INET, SOCK_STREAM, 0));
            if (connect(fd, (struct sockaddr *)&at, sizeof at)) fail("connect");
        }
        if (send(fd, &request, 1, 0) != 1) fail("send");
        swap(fd, 0);
        if (i) printf("%f\n", now() - start);
    }
    close(fd);
    return 0;
}

/*
 * A C subscriber for the crash test in bus-tests/tests/capi.rs, on the bus
 * at $SHMBUS_SOCKET.
 *
 *   holder hold SUBSYSTEM N: subscribes, prints "subscribed", receives N
 *       messages and keeps them (never freed), prints "holding N", then
 *       sleeps until killed.
 *   holder take SUBSYSTEM N: receives N messages (10 s each at most),
 *       printing "msg PATH BODY REDELIVERED" for each, then "done".
 */
#define _POSIX_C_SOURCE 200809L
#include <shmbus.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fail(const char *what) {
    fprintf(stderr, "holder: %s: %s (%d)\n", what, shmbus_last_error(), shmbus_last_error_code());
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "hold") != 0 && strcmp(argv[1], "take") != 0)) {
        fprintf(stderr, "usage: holder hold|take SUBSYSTEM N\n");
        return 2;
    }
    int n = atoi(argv[3]);
    shmbus_bus *bus = shmbus_connect(NULL);
    if (!bus)
        fail("connect");
    shmbus_subscriber *sub = shmbus_subscribe(bus, argv[2]);
    if (!sub)
        fail("subscribe");
    printf("subscribed\n");
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        shmbus_message *m = NULL;
        if (shmbus_recv(sub, 10000, &m) != 0)
            fail("recv");
        if (strcmp(argv[1], "take") == 0) {
            size_t len = 0;
            const char *body = shmbus_message_body(m, &len);
            printf("msg %s %.*s %d\n", shmbus_message_path(m), (int)len, body,
                   shmbus_message_is_redelivered(m));
            shmbus_message_free(m);
        }
        /* hold: the message is kept, its slot held, until the kill. */
    }
    if (strcmp(argv[1], "hold") == 0) {
        printf("holding %d\n", n);
        fflush(stdout);
        for (;;)
            pause();
    }
    printf("done\n");
    shmbus_subscriber_free(sub);
    shmbus_bus_free(bus);
    return 0;
}

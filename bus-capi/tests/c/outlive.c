/*
 * A C client that outlives its daemon, for bus-tests/tests/capi.rs, on the
 * bus at $SHMBUS_SOCKET: subscribes, prints "subscribed", receives until
 * the daemon is gone (SHMBUS_EGONE), then frees its subscriber and its bus
 * and prints "freed". With SIGPIPE at its default action, as in most C
 * programs: nothing the library does on the way may raise it.
 */
#define _POSIX_C_SOURCE 200809L
#include <shmbus.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    signal(SIGPIPE, SIG_DFL);
    shmbus_bus *bus = shmbus_connect(NULL);
    if (!bus) {
        fprintf(stderr, "outlive: connect: %s\n", shmbus_last_error());
        return 1;
    }
    shmbus_subscriber *sub = shmbus_subscribe(bus, "outlive");
    if (!sub) {
        fprintf(stderr, "outlive: subscribe: %s\n", shmbus_last_error());
        return 1;
    }
    printf("subscribed\n");
    fflush(stdout);
    for (int i = 0; i < 600; i++) {
        shmbus_message *m = NULL;
        int rc = shmbus_recv(sub, 100, &m);
        if (rc == 0) {
            shmbus_message_free(m);
            continue;
        }
        if (rc == SHMBUS_EGONE) {
            printf("gone\n");
            fflush(stdout);
            shmbus_subscriber_free(sub);
            shmbus_bus_free(bus);
            printf("freed\n");
            return 0;
        }
        if (rc != SHMBUS_ETIMEDOUT) {
            fprintf(stderr, "outlive: recv: %s (%d)\n", shmbus_last_error(), rc);
            return 1;
        }
    }
    fprintf(stderr, "outlive: the daemon never went\n");
    return 1;
}

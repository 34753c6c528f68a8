/* Sends a message to itself, once copied and once written in place. */
#include <shmbus.h>
#include <stdio.h>

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, shmbus_last_error());
    return 1;
}

int main(void) {
    shmbus_bus *bus = shmbus_connect(NULL); /* $SHMBUS_SOCKET, or the default bus */
    if (!bus) return fail("connect");
    shmbus_subscriber *sub = shmbus_subscribe(bus, "hello");
    shmbus_publisher *pub = shmbus_publisher_new(bus);
    if (!sub || !pub) return fail("subscribe/publish");

    if (shmbus_send(pub, "hello://copied", "hello from C", 12) != 0) return fail("send");
    shmbus_loan *loan;
    void *body;
    size_t room;
    if (shmbus_loan(pub, "hello://in-place", &loan, &body, &room) != 0) return fail("loan");
    int len = snprintf(body, room, "written in the slot (%zu bytes of room)", room);
    if (shmbus_loan_send(loan, (size_t)len) != 0) return fail("loan_send");

    for (int i = 0; i < 2; i++) {
        shmbus_message *msg;
        if (shmbus_recv(sub, 1000, &msg) != 0) return fail("recv");
        size_t n;
        const char *text = shmbus_message_body(msg, &n);
        printf("%s: %.*s\n", shmbus_message_path(msg), (int)n, text);
        shmbus_message_free(msg);
    }
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    shmbus_bus_free(bus);
    return 0;
}

/*
 * The C API end to end, run by bus-tests/tests/capi.rs against a real daemon
 * ($SHMBUS_SOCKET) with a Rust Router service on subsystem "svc" (the `peer
 * serve` role) and a Rust test process that subscribes to "fromc" and sends
 * to "toc". Every check that fails prints why and exits 1.
 *
 * stdout: "ready" once subscribed to "toc" (the test then sends there),
 * "got PATH BODY" for what came from Rust, then "ok".
 */
#define _POSIX_C_SOURCE 200809L
#include <shmbus.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: check failed: %s (last error %d: %s)\n", __FILE__,    \
                    __LINE__, #cond, shmbus_last_error_code(), shmbus_last_error());      \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

#define T 10000 /* ms: every wait for another process has this deadline */

/* Receives one message from `sub` and checks its path and body. */
static void expect(shmbus_subscriber *sub, const char *path, const void *body, size_t len) {
    shmbus_message *m = NULL;
    CHECK(shmbus_recv(sub, T, &m) == 0 && m != NULL);
    CHECK(strcmp(shmbus_message_path(m), path) == 0);
    size_t n = 99;
    const void *b = shmbus_message_body(m, &n);
    CHECK(b != NULL && n == len && memcmp(b, body, len) == 0);
    CHECK(((uintptr_t)b & 15) == 0);
    CHECK(shmbus_message_is_redelivered(m) == 0);
    CHECK(shmbus_message_trace_id(m) != 0 && shmbus_message_id(m) != 0);
    shmbus_message_free(m);
}

static void errors_without_a_bus(void) {
    /* Nothing listens there: NULL, with a code and a message. */
    CHECK(shmbus_connect("/nonexistent/shmbus.sock") == NULL);
    CHECK(shmbus_last_error_code() == SHMBUS_EGONE);
    CHECK(strstr(shmbus_last_error(), "/nonexistent/shmbus.sock") != NULL);
    CHECK(strcmp(shmbus_strerror(SHMBUS_ETIMEDOUT), "timed out") == 0);
    CHECK(strcmp(shmbus_strerror(12345), "unknown error") == 0);
    /* Every handle may be freed with NULL; NULL handles are EINVAL. */
    shmbus_bus_free(NULL);
    shmbus_publisher_free(NULL);
    shmbus_loan_free(NULL);
    shmbus_subscriber_free(NULL);
    shmbus_message_free(NULL);
    CHECK(shmbus_send(NULL, "capi://x", "x", 1) == SHMBUS_EINVAL);
    CHECK(shmbus_loan_send(NULL, 0) == SHMBUS_EINVAL);
    shmbus_message *m = (shmbus_message *)&m;
    CHECK(shmbus_recv(NULL, 0, &m) == SHMBUS_EINVAL && m == NULL);
    CHECK(shmbus_message_is_redelivered(NULL) == SHMBUS_EINVAL);
    size_t n = 5;
    CHECK(shmbus_message_body(NULL, &n) == NULL && n == 0);
    CHECK(shmbus_message_path(NULL) == NULL);
    CHECK(shmbus_publisher_new(NULL) == NULL && shmbus_last_error_code() == SHMBUS_EINVAL);
}

static void publish_and_subscribe(shmbus_bus *bus, shmbus_publisher *pub, shmbus_subscriber *sub) {
    CHECK(shmbus_send(pub, "capi://hello", "hello", 5) == 0);
    expect(sub, "capi://hello", "hello", 5);
    /* An empty body, given as NULL. */
    CHECK(shmbus_send(pub, "capi://empty", NULL, 0) == 0);
    expect(sub, "capi://empty", "", 0);

    /* Bad arguments and refusals, each with its code; nothing is sent. */
    CHECK(shmbus_send(pub, "no-separator", "x", 1) == SHMBUS_EINVAL);
    CHECK(strstr(shmbus_last_error(), "invalid path") != NULL);
    CHECK(shmbus_send(pub, NULL, "x", 1) == SHMBUS_EINVAL);
    CHECK(shmbus_send(pub, "capi://x", NULL, 3) == SHMBUS_EINVAL);
    CHECK(shmbus_send(pub, "nobody://x", "x", 1) == SHMBUS_ENOSUB);
    static char big[1 << 20];
    CHECK(shmbus_send(pub, "capi://big", big, sizeof big) == SHMBUS_ETOOBIG);
    CHECK(strstr(shmbus_last_error(), "--slot-size") != NULL);
    CHECK(shmbus_subscribe(bus, "Not A Name") == NULL && shmbus_last_error_code() == SHMBUS_EINVAL);

    /* Receive timeouts: none queued. */
    shmbus_message *m = NULL;
    CHECK(shmbus_recv(sub, 0, &m) == SHMBUS_ETIMEDOUT && m == NULL);
    CHECK(shmbus_recv(sub, 30, &m) == SHMBUS_ETIMEDOUT && m == NULL);
    CHECK(shmbus_recv(sub, -2, &m) == SHMBUS_EINVAL);
    CHECK(shmbus_recv(sub, 0, NULL) == SHMBUS_EINVAL);
}

static void loans(shmbus_bus *bus, shmbus_publisher *pub, shmbus_subscriber *sub) {
    shmbus_loan *loan = NULL;
    void *body = NULL;
    size_t cap = 0;
    CHECK(shmbus_loan(pub, "capi://loaned", &loan, &body, &cap) == 0);
    CHECK(loan != NULL && body != NULL && cap >= 64 && ((uintptr_t)body & 15) == 0);
    memcpy(body, "in place", 8);
    /* The publisher is busy while its loan is out. */
    CHECK(shmbus_send(pub, "capi://x", "x", 1) == SHMBUS_EBUSY);
    shmbus_loan *second = (shmbus_loan *)&second;
    CHECK(shmbus_loan(pub, "capi://x", &second, NULL, NULL) == SHMBUS_EBUSY && second == NULL);
    CHECK(shmbus_loan_send(loan, 8) == 0);
    expect(sub, "capi://loaned", "in place", 8);

    /* A loan given back unsent; then the publisher works again. */
    CHECK(shmbus_loan(pub, "capi://dropped", &loan, NULL, NULL) == 0);
    shmbus_loan_free(loan);
    /* A loan sent with more than its capacity: refused, and consumed. */
    CHECK(shmbus_loan(pub, "capi://toolong", &loan, &body, &cap) == 0);
    CHECK(shmbus_loan_send(loan, cap + 1) == SHMBUS_ETOOBIG);
    CHECK(shmbus_send(pub, "capi://after", "after", 5) == 0);
    expect(sub, "capi://after", "after", 5);

    /* A publisher freed while its loan is out lives until the loan ends. */
    shmbus_publisher *p2 = shmbus_publisher_new(bus);
    CHECK(p2 != NULL);
    CHECK(shmbus_loan(p2, "capi://orphan", &loan, &body, &cap) == 0);
    shmbus_publisher_free(p2);
    memcpy(body, "orphan", 6);
    CHECK(shmbus_loan_send(loan, 6) == 0);
    expect(sub, "capi://orphan", "orphan", 6);
    /* And one whose loan is freed unsent. */
    p2 = shmbus_publisher_new(bus);
    CHECK(p2 != NULL && shmbus_loan(p2, "capi://never", &loan, NULL, NULL) == 0);
    shmbus_publisher_free(p2);
    shmbus_loan_free(loan);
    CHECK(shmbus_recv(sub, 0, &(shmbus_message *){NULL}) == SHMBUS_ETIMEDOUT);
}

static void frees_in_any_order(shmbus_bus *bus, shmbus_publisher *pub) {
    /* A message outlives its subscriber handle. */
    shmbus_subscriber *s2 = shmbus_subscribe(bus, "capi2");
    CHECK(s2 != NULL);
    CHECK(shmbus_send(pub, "capi2://kept", "kept", 4) == 0);
    shmbus_message *m = NULL;
    CHECK(shmbus_recv(s2, T, &m) == 0);
    shmbus_subscriber_free(s2);
    size_t n = 0;
    const char *b = shmbus_message_body(m, &n);
    CHECK(n == 4 && memcmp(b, "kept", 4) == 0);
    CHECK(strcmp(shmbus_message_path(m), "capi2://kept") == 0);
    shmbus_message_free(m);
}

static void fail_fast(shmbus_bus *bus) {
    /* The daemon's queues hold 16: a publisher that does not wait gets
       SHMBUS_EAGAIN once the queue is full, and nothing is lost. */
    shmbus_subscriber *s = shmbus_subscribe(bus, "full");
    shmbus_publisher *p = shmbus_publisher_new_timeout(bus, 0);
    CHECK(s != NULL && p != NULL);
    int sent = 0, rc = 0;
    while (sent < 1000 && (rc = shmbus_send(p, "full://x", &sent, sizeof sent)) == 0)
        sent++;
    CHECK(rc == SHMBUS_EAGAIN && sent > 0 && sent < 1000);
    for (int i = 0; i < sent; i++) {
        shmbus_message *m = NULL;
        CHECK(shmbus_recv(s, T, &m) == 0);
        CHECK(*(const int *)shmbus_message_body(m, NULL) == i);
        shmbus_message_free(m);
    }
    CHECK(shmbus_publisher_new_timeout(bus, -5) == NULL && shmbus_last_error_code() == SHMBUS_EINVAL);
    shmbus_publisher_free(p);
    shmbus_subscriber_free(s);
}

static void *ask(void *arg) {
    shmbus_bus *bus = arg;
    for (int i = 0; i < 20; i++) {
        char body[32];
        int len = snprintf(body, sizeof body, "thread %p %d", (void *)&body, i);
        shmbus_message *reply = NULL;
        if (shmbus_request(bus, "svc://echo/threads", body, (size_t)len, T, &reply) != 0)
            return "request failed";
        size_t n = 0;
        const void *b = shmbus_message_body(reply, &n);
        int same = n == (size_t)len && memcmp(b, body, n) == 0;
        shmbus_message_free(reply);
        if (!same)
            return "reply is not the request's echo";
    }
    return NULL;
}

static void requests(shmbus_bus *bus) {
    shmbus_message *reply = NULL;
    CHECK(shmbus_request(bus, "svc://echo/c", "ping", 4, T, &reply) == 0);
    size_t n = 0;
    const void *b = shmbus_message_body(reply, &n);
    CHECK(n == 4 && memcmp(b, "ping", 4) == 0);
    CHECK(strcmp(shmbus_message_path(reply), "svc://echo/c") == 0);
    CHECK(shmbus_message_is_redelivered(reply) == 0 && shmbus_message_trace_id(reply) != 0);
    shmbus_message_free(reply);

    /* The service's errors, each with its code and the handler's text. */
    CHECK(shmbus_request(bus, "svc://fail", NULL, 0, T, &reply) == SHMBUS_EHANDLER && reply == NULL);
    CHECK(strstr(shmbus_last_error(), "nope") != NULL);
    CHECK(shmbus_request(bus, "svc://nothing/here", "", 0, T, &reply) == SHMBUS_ENOROUTE);
    CHECK(shmbus_request(bus, "svc://slow/300", "", 0, 50, &reply) == SHMBUS_ETIMEDOUT);
    CHECK(shmbus_request(bus, "nobody://x", "", 0, T, &reply) == SHMBUS_ENOSUB);
    CHECK(shmbus_request(bus, "svc://echo/x", "", 0, T, NULL) == SHMBUS_EINVAL);

    /* Two threads ask through one bus at once. */
    pthread_t a, c;
    void *ra = "not run", *rc = "not run";
    CHECK(pthread_create(&a, NULL, ask, bus) == 0 && pthread_create(&c, NULL, ask, bus) == 0);
    CHECK(pthread_join(a, &ra) == 0 && pthread_join(c, &rc) == 0);
    if (ra || rc) {
        fprintf(stderr, "threads: %s / %s\n", ra ? (char *)ra : "ok", rc ? (char *)rc : "ok");
        exit(1);
    }
}

/* With Rust on the other side, in another process. */
static void with_rust(shmbus_bus *bus, shmbus_publisher *pub) {
    shmbus_subscriber *toc = shmbus_subscribe(bus, "toc");
    CHECK(toc != NULL);
    printf("ready\n");
    fflush(stdout);
    CHECK(shmbus_send(pub, "fromc://hello", "hi from C", 9) == 0);
    shmbus_loan *loan = NULL;
    char *body = NULL;
    size_t cap = 0;
    CHECK(shmbus_loan(pub, "fromc://loaned", &loan, (void **)&body, &cap) == 0);
    int len = snprintf(body, cap, "written in place, %zu bytes of room", cap);
    CHECK(shmbus_loan_send(loan, (size_t)len) == 0);
    shmbus_message *m = NULL;
    CHECK(shmbus_recv(toc, T, &m) == 0);
    size_t n = 0;
    const char *b = shmbus_message_body(m, &n);
    printf("got %s %.*s\n", shmbus_message_path(m), (int)n, b);
    shmbus_message_free(m);
    shmbus_subscriber_free(toc);
}

int main(void) {
    errors_without_a_bus();
    shmbus_bus *bus = shmbus_connect(NULL); /* $SHMBUS_SOCKET */
    CHECK(bus != NULL);
    shmbus_subscriber *sub = shmbus_subscribe(bus, "capi");
    shmbus_publisher *pub = shmbus_publisher_new(bus);
    CHECK(sub != NULL && pub != NULL);
    publish_and_subscribe(bus, pub, sub);
    loans(bus, pub, sub);
    frees_in_any_order(bus, pub);
    fail_fast(bus);
    requests(bus);
    with_rust(bus, pub);

    /* A forked child may not use its parent's connection, and is told
     * what to call instead, in C terms. It reports through a pipe and ends
     * with SIGKILL: under valgrind, an exit would report the parent's
     * threads' memory, which the child never had, as leaked. */
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        int rc = shmbus_send(pub, "capi://forked", "x", 1);
        char said[512];
        int n = snprintf(said, sizeof said, "%d %s", rc, shmbus_last_error());
        if (write(fds[1], said, n > 0 && (size_t)n < sizeof said ? (size_t)n : sizeof said - 1) < 0)
            _exit(1);
        kill(getpid(), SIGKILL);
    }
    close(fds[1]);
    char got[512] = {0};
    size_t have = 0;
    ssize_t r;
    while (have < sizeof got - 1 && (r = read(fds[0], got + have, sizeof got - 1 - have)) > 0)
        have += (size_t)r;
    close(fds[0]);
    CHECK(waitpid(child, NULL, 0) == child);
    if (atoi(got) != SHMBUS_EFORKED || strstr(got, "shmbus_connect()") == NULL)
        fprintf(stderr, "forked child: %s\n", got);
    CHECK(atoi(got) == SHMBUS_EFORKED && strstr(got, "shmbus_connect()") != NULL);

    /* A reply outlives the bus handle it came from. */
    shmbus_message *reply = NULL;
    CHECK(shmbus_request(bus, "svc://echo/last", "last", 4, T, &reply) == 0);
    shmbus_bus_free(bus);
    shmbus_publisher_free(pub);
    shmbus_subscriber_free(sub);
    size_t n = 0;
    CHECK(memcmp(shmbus_message_body(reply, &n), "last", 4) == 0 && n == 4);
    shmbus_message_free(reply);
    printf("ok\n");
    return 0;
}

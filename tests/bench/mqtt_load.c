/*
 * mqtt_load.c — the MQTT load generator and the bare subscriber the bridge
 * benchmark measures almanac against (libmosquitto).
 *
 *   mqtt_load pub PORT N TOPICS QOS
 *       publishes N messages to bench/t0 .. bench/t<TOPICS-1> in turn, each
 *       payload its sequence number, not retained; prints the seconds taken.
 *   mqtt_load count PORT N QOS
 *       subscribes to bench/# and counts messages until N arrived or none
 *       came for 3 s; prints "ready" once subscribed, then the count and the
 *       wall-clock time (µs since the epoch) of the last one.
 */
#include <mosquitto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic long published, received;
static _Atomic long long last_us;
static atomic_bool subscribed;

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void on_publish(struct mosquitto *m, void *arg, int mid)
{
    (void)m, (void)arg, (void)mid;
    atomic_fetch_add(&published, 1);
}

static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg)
{
    (void)m, (void)arg, (void)msg;
    atomic_fetch_add(&received, 1);
    atomic_store(&last_us, now_us());
}

static void on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *qos)
{
    (void)m, (void)arg, (void)mid, (void)n, (void)qos;
    atomic_store(&subscribed, true);
}

static struct mosquitto *connect_to(int port)
{
    struct mosquitto *m = mosquitto_new(NULL, true, NULL);
    if (m == NULL || mosquitto_connect(m, "127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt_load: cannot connect to 127.0.0.1:%d\n", port);
        exit(1);
    }
    return m;
}

static int pub(int port, long n, long topics, int qos)
{
    struct mosquitto *m = connect_to(port);
    char topic[64], payload[32];
    mosquitto_publish_callback_set(m, on_publish);
    mosquitto_max_inflight_messages_set(m, 100);
    mosquitto_loop_start(m);
    long long t0 = now_us();
    for (long i = 0; i < n; i++) {
        snprintf(topic, sizeof topic, "bench/t%ld", i % topics);
        int len = snprintf(payload, sizeof payload, "%ld", i);
        /* Bounded: libmosquitto queues without limit otherwise. */
        while (i - atomic_load(&published) > 10000)
            usleep(100);
        if (mosquitto_publish(m, NULL, topic, len, payload, qos, false) != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt_load: publish failed\n");
            return 1;
        }
    }
    while (atomic_load(&published) < n)
        usleep(1000);
    printf("%.3f\n", (double)(now_us() - t0) / 1e6);
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    return 0;
}

static int count(int port, long n, int qos)
{
    struct mosquitto *m = connect_to(port);
    mosquitto_message_callback_set(m, on_message);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_subscribe(m, NULL, "bench/#", qos);
    mosquitto_loop_start(m);
    while (!atomic_load(&subscribed))
        usleep(1000);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        usleep(10000);
        long got = atomic_load(&received);
        long long last = atomic_load(&last_us);
        if (got >= n || (got > 0 && now_us() - last > 3000000))
            break;
    }
    printf("%ld %lld\n", atomic_load(&received), atomic_load(&last_us));
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    return 0;
}

int main(int argc, char **argv)
{
    mosquitto_lib_init();
    int rc = 2;
    if (argc == 6 && strcmp(argv[1], "pub") == 0)
        rc = pub(atoi(argv[2]), atol(argv[3]), atol(argv[4]), atoi(argv[5]));
    else if (argc == 5 && strcmp(argv[1], "count") == 0)
        rc = count(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
    else
        fprintf(stderr, "usage: mqtt_load pub PORT N TOPICS QOS | count PORT N QOS\n");
    mosquitto_lib_cleanup();
    return rc;
}

/*
 * worker.c — a background thread that runs a task about once a second (the
 * WAL checkpointer, the history pruner), at once again while the task says
 * more is waiting, and stops promptly when asked.
 * Invariant: `stop` and the waits are under `lock`; the task runs without it.
 */
#include "store_int.h"

#include <time.h>
#include <unistd.h>

static void *worker__run(void *arg)
{
    struct worker *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        pthread_mutex_unlock(&w->lock);
        bool more = w->task(w->arg);
        if (more)
            usleep(2000); /* let the committer in between batches */
        pthread_mutex_lock(&w->lock);
        if (more || w->stop)
            continue;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&w->cond, &w->lock, &until);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int worker__start(struct worker *w, bool (*task)(void *arg), void *arg)
{
    w->task = task;
    w->arg = arg;
    w->stop = false;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    if (pthread_create(&w->thread, NULL, worker__run, w) != 0) {
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        return -1;
    }
    w->started = true;
    return 0;
}

void worker__stop(struct worker *w)
{
    if (!w->started)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    w->started = false;
}

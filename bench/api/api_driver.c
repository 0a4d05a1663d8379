/* The library's side of bench/api-e2e.sh: synthesizes through the public C
 * API only (linked against libvmsynth.so, like an embedder) and prints the
 * wall time of the synthesis as JSON on stdout.
 *
 *   api_driver feed BASE OVERLAY OUT THREADS [CHUNK]
 *       the overlay is read into memory first (not timed), then pushed with
 *       vmsynth_synth_feed in CHUNK-byte pieces (default 1 MiB) and finished:
 *       a daemon feeding what it received
 *   api_driver file BASE OVERLAY OUT THREADS
 *       vmsynth_synthesize from the file path (the CLI's path, in-process)
 *   api_driver concurrent N MODE BASE OVERLAY OUTPREFIX THREADS
 *       N syntheses of MODE (feed|file) at once from N threads, outputs
 *       OUTPREFIX0 .. OUTPREFIX<N-1>; the time is from the start of the first
 *       to the end of the last
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <vmsynth/vmsynth.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)n);
  if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

struct job {
  const char *mode, *base, *overlay, *out, *threads;
  const unsigned char *data;
  size_t len, chunk;
  int rc;
  char error[512];
};

static void *run(void *arg) {
  struct job *j = arg;
  vmsynth_params *p = vmsynth_params_new();
  vmsynth_params_set(p, "threads", j->threads);
  vmsynth_params_set(p, "force", "1");
  j->error[0] = '\0';
  if (strcmp(j->mode, "file") == 0) {
    char *result = NULL;
    j->rc = vmsynth_synthesize(j->base, j->overlay, j->out, p, &result);
    if (j->rc != VMSYNTH_OK && result != NULL) snprintf(j->error, sizeof j->error, "%s", result);
    vmsynth_free(result);
  } else {
    vmsynth_synth *s = NULL;
    j->rc = vmsynth_synth_open(&s, j->base, j->out, p);
    for (size_t at = 0; j->rc == VMSYNTH_OK && at < j->len; at += j->chunk) {
      size_t n = j->len - at < j->chunk ? j->len - at : j->chunk;
      j->rc = vmsynth_synth_feed(s, j->data + at, n);
    }
    if (j->rc == VMSYNTH_OK) j->rc = vmsynth_synth_finish(s);
    if (j->rc != VMSYNTH_OK && s != NULL) snprintf(j->error, sizeof j->error, "%s", vmsynth_synth_error(s));
    vmsynth_synth_free(s);
  }
  vmsynth_params_free(p);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: see the comment at the top of bench/api/api_driver.c\n");
    return 2;
  }
  int concurrent = strcmp(argv[1], "concurrent") == 0;
  int n = concurrent ? atoi(argv[2]) : 1;
  const char *mode = concurrent ? argv[3] : argv[1];
  char **a = concurrent ? argv + 4 : argv + 2; /* BASE OVERLAY OUT THREADS [CHUNK] */
  if (n < 1 || n > 64 || (concurrent && argc < 8)) return 2;
  size_t len = 0;
  unsigned char *data = NULL;
  if (strcmp(mode, "feed") == 0) {
    data = slurp(a[1], &len);
    if (data == NULL) {
      fprintf(stderr, "cannot read %s\n", a[1]);
      return 6;
    }
  }
  struct job *jobs = calloc((size_t)n, sizeof *jobs);
  char (*outs)[4096] = calloc((size_t)n, sizeof *outs);
  pthread_t *tids = calloc((size_t)n, sizeof *tids);
  for (int i = 0; i < n; ++i) {
    if (concurrent) snprintf(outs[i], sizeof outs[i], "%s%d", a[2], i);
    else snprintf(outs[i], sizeof outs[i], "%s", a[2]);
    jobs[i] = (struct job){mode, a[0], a[1], outs[i], a[3], data, len,
                           (!concurrent && argc > 6) ? (size_t)atol(argv[6]) : (size_t)1 << 20, 0, {0}};
  }
  double t0 = now();
  for (int i = 0; i < n; ++i) pthread_create(&tids[i], NULL, run, &jobs[i]);
  for (int i = 0; i < n; ++i) pthread_join(tids[i], NULL);
  double t = now() - t0;
  int rc = 0;
  for (int i = 0; i < n; ++i) {
    if (jobs[i].rc != VMSYNTH_OK) {
      fprintf(stderr, "synthesis %d failed (%s): %s\n", i, vmsynth_status_name(jobs[i].rc), jobs[i].error);
      rc = jobs[i].rc;
    }
  }
  printf("{\"mode\": \"%s\", \"syntheses\": %d, \"seconds\": %.4f}\n", mode, n, t);
  free(data);
  free(jobs);
  free(outs);
  free(tids);
  return rc;
}

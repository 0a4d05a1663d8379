/* consumer: a C99 program that uses libvmsynth the way an embedder does,
 * through the installed <vmsynth/vmsynth.h> and libvmsynth.so.0 only, built
 * against an installed prefix (tests/consumer/run.sh builds it once with
 * pkg-config and once with CMake's find_package).
 *
 *   consumer WORK_DIR BASE_DIR LAUNCH_DIR OVERLAY
 *
 * BASE_DIR/LAUNCH_DIR are a VM pair and OVERLAY the overlay of LAUNCH_DIR
 * against BASE_DIR (the driver makes them with the vmsynth command). WORK_DIR
 * is an empty directory for outputs and damaged overlays. Checks, in order:
 * the run-time version equals the header's; feeding the overlay in random
 * chunks of 1 byte to 1 MiB gives the launch images bit for bit; 8
 * syntheses run at once from 8 threads; a cancel from another thread in the
 * middle of the stream gives VMSYNTH_E_CANCELLED and leaves nothing; freeing
 * an unfinished handle leaves nothing; each bad input of
 * tests/cli/bad_input_test.cc gives its status code and a message naming
 * what is wrong, through a handle and through vmsynth_synthesize. Every
 * failure is printed ("consumer: FAIL ..."); the exit status is 1 if any
 * check failed, 2 on bad arguments, 0 otherwise.
 *
 * "Nothing left" means: out_dir does not exist and its parent holds no entry
 * whose name starts with "." + basename(out_dir) (the library's staging). */
#define _XOPEN_SOURCE 700

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vmsynth/vmsynth.h>

/* ---- Reporting ---------------------------------------------------------- */

static pthread_mutex_t g_report_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_failures;
static int g_checks;

static void fail_at(int line, const char* fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&g_report_mu);
  ++g_failures;
  fprintf(stderr, "consumer: FAIL (consumer.c:%d): ", line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  pthread_mutex_unlock(&g_report_mu);
}

static void count_check(void) {
  pthread_mutex_lock(&g_report_mu);
  ++g_checks;
  pthread_mutex_unlock(&g_report_mu);
}

/* CHECK(condition, printf-format, ...): records a failure, goes on. */
#define CHECK(cond, ...)                         \
  do {                                           \
    count_check();                               \
    if (!(cond)) fail_at(__LINE__, __VA_ARGS__); \
  } while (0)

static void die(const char* fmt, ...) {
  va_list ap;
  fprintf(stderr, "consumer: ERROR: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

/* ---- Files -------------------------------------------------------------- */

struct buf {
  unsigned char* p;
  size_t n;
};

static void buf_free(struct buf* b) {
  free(b->p);
  b->p = NULL;
  b->n = 0;
}

/* 0 and the whole file in *b, or -1 (errno set) if it cannot be read. */
static int read_whole(const char* path, struct buf* b) {
  FILE* f = fopen(path, "rb");
  long size;
  b->p = NULL;
  b->n = 0;
  if (f == NULL) return -1;
  if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return -1;
  }
  b->n = (size_t)size;
  b->p = malloc(b->n ? b->n : 1);
  if (b->p == NULL) die("out of memory reading %s", path);
  if (fread(b->p, 1, b->n, f) != b->n) {
    fclose(f);
    buf_free(b);
    return -1;
  }
  fclose(f);
  return 0;
}

static void write_whole(const char* path, const unsigned char* p, size_t n) {
  FILE* f = fopen(path, "wb");
  if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) die("cannot write %s: %s", path, strerror(errno));
}

static void read_or_die(const char* path, struct buf* b) {
  if (read_whole(path, b) != 0) die("cannot read %s: %s", path, strerror(errno));
}

static int path_exists(const char* path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static void join_path(char* out, size_t size, const char* a, const char* b) {
  if ((size_t)snprintf(out, size, "%s/%s", a, b) >= size) die("path too long: %s/%s", a, b);
}

static int remove_entry(const char* path, const struct stat* st, int type, struct FTW* ftw) {
  (void)st;
  (void)type;
  (void)ftw;
  return remove(path);
}

static void remove_tree(const char* path) {
  if (path_exists(path) && nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    die("cannot remove %s: %s", path, strerror(errno));
}

/* The files a VM directory may hold, compared by the checks. */
static const char* const kVmFiles[] = {"memory.img", "disk.img", "devstate.bin", "vm.json"};
#define VM_FILE_COUNT (sizeof kVmFiles / sizeof kVmFiles[0])

/* 1 if the VM directories hold the same files with the same bytes; else
 * reports (under `what`) the first difference and returns 0. */
static int same_vm(const char* what, const char* got_dir, const char* want_dir) {
  size_t i;
  for (i = 0; i < VM_FILE_COUNT; ++i) {
    char got_path[4096], want_path[4096];
    struct buf got, want;
    int have_got, have_want;
    join_path(got_path, sizeof got_path, got_dir, kVmFiles[i]);
    join_path(want_path, sizeof want_path, want_dir, kVmFiles[i]);
    have_got = read_whole(got_path, &got) == 0;
    have_want = read_whole(want_path, &want) == 0;
    if (have_got != have_want) {
      fail_at(__LINE__, "%s: %s is %s in the output but %s in the launch VM", what, kVmFiles[i],
              have_got ? "present" : "missing", have_want ? "present" : "missing");
      buf_free(&got);
      buf_free(&want);
      return 0;
    }
    if (have_got) {
      size_t n = got.n < want.n ? got.n : want.n, at = 0;
      while (at < n && got.p[at] == want.p[at]) ++at;
      if (got.n != want.n || at != n) {
        fail_at(__LINE__, "%s: %s differs from the launch VM's (%zu vs %zu bytes, first difference at byte %zu)", what,
                got_path, got.n, want.n, at);
        buf_free(&got);
        buf_free(&want);
        return 0;
      }
    }
    buf_free(&got);
    buf_free(&want);
  }
  count_check();
  return 1;
}

/* 1 if nothing is at out_dir and no staging entry (".<basename>...") is in
 * its parent; else reports what is left and returns 0. */
static int nothing_left(const char* what, const char* out_dir) {
  char parent[4096];
  const char* slash = strrchr(out_dir, '/');
  const char* name = slash ? slash + 1 : out_dir;
  size_t name_len = strlen(name);
  DIR* d;
  struct dirent* e;
  int clean = 1;
  if (path_exists(out_dir)) {
    fail_at(__LINE__, "%s: %s exists", what, out_dir);
    clean = 0;
  }
  if (slash == NULL) {
    strcpy(parent, ".");
  } else {
    size_t len = (size_t)(slash - out_dir);
    if (len >= sizeof parent) die("path too long: %s", out_dir);
    memcpy(parent, out_dir, len);
    parent[len] = '\0';
  }
  d = opendir(parent);
  if (d == NULL) die("cannot list %s: %s", parent, strerror(errno));
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' && strncmp(e->d_name + 1, name, name_len) == 0) {
      fail_at(__LINE__, "%s: staging entry %s/%s was left behind", what, parent, e->d_name);
      clean = 0;
    }
  }
  closedir(d);
  count_check();
  return clean;
}

/* A cheap fingerprint of a VM directory's files (FNV-1a), to show that the
 * base was not changed. */
static uint64_t vm_fingerprint(const char* dir) {
  uint64_t h = 1469598103934665603ull;
  size_t i, j;
  for (i = 0; i < VM_FILE_COUNT; ++i) {
    char path[4096];
    struct buf b;
    join_path(path, sizeof path, dir, kVmFiles[i]);
    if (read_whole(path, &b) != 0) continue;
    for (j = 0; j < b.n; ++j) h = (h ^ b.p[j]) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* file separator */
    buf_free(&b);
  }
  return h;
}

/* ---- Chunked feeding ---------------------------------------------------- */

/* xorshift64*: per-feeder random chunk sizes, reproducible from the seed. */
static uint64_t next_random(uint64_t* state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 2685821657736338717ull;
}

#define MIB ((size_t)1 << 20)

/* The size of the k-th chunk: 1 byte first, then 1 MiB, then sizes spread
 * evenly over the orders of magnitude from 1 byte to 1 MiB (a uniform size
 * would almost never be small). */
static size_t chunk_size(uint64_t* state, size_t k) {
  unsigned bits;
  size_t n;
  if (k == 0) return 1;
  if (k == 1) return MIB;
  bits = (unsigned)(next_random(state) % 21); /* 2^0 .. 2^20 */
  n = 1 + (size_t)(next_random(state) % ((uint64_t)1 << bits));
  return n > MIB ? MIB : n;
}

struct outcome {
  int status;         /* of finish (or of open when it failed) */
  int feed_status;    /* the first non-OK feed status, else OK */
  char message[1024]; /* vmsynth_synth_error after the failure */
};

/* Opens a handle, feeds `len` bytes of `data` in random chunks (seed), and
 * finishes; after a failed feed calls finish anyway and checks that it
 * repeats the failure (sticky status). */
static void synth_fed(const char* base, const char* out, const vmsynth_params* p, const unsigned char* data, size_t len,
                      uint64_t seed, struct outcome* o) {
  vmsynth_synth* s = NULL;
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t at = 0, k = 0;
  o->feed_status = VMSYNTH_OK;
  o->message[0] = '\0';
  o->status = vmsynth_synth_open(&s, base, out, p);
  if (o->status != VMSYNTH_OK) {
    if (s != NULL) snprintf(o->message, sizeof o->message, "%s", vmsynth_synth_error(s));
    vmsynth_synth_free(s);
    return;
  }
  while (at < len) {
    size_t n = chunk_size(&state, k++);
    int rc;
    if (n > len - at) n = len - at;
    rc = vmsynth_synth_feed(s, data + at, n);
    if (rc != VMSYNTH_OK) {
      o->feed_status = rc;
      break;
    }
    at += n;
  }
  o->status = vmsynth_synth_finish(s);
  snprintf(o->message, sizeof o->message, "%s", vmsynth_synth_error(s));
  if (o->feed_status != VMSYNTH_OK) {
    CHECK(o->status == o->feed_status, "%s: feed failed with %d but the finish after it returned %d (not sticky)", out,
          o->feed_status, o->status);
  }
  if (o->status == VMSYNTH_OK) {
    char* json = NULL;
    int rc = vmsynth_synth_stats_json(s, &json);
    CHECK(rc == VMSYNTH_OK && json != NULL && strstr(json, "\"ok\"") != NULL,
          "%s: vmsynth_synth_stats_json after a successful finish returned %d, %s", out, rc, json ? json : "NULL");
    vmsynth_free(json);
  } else {
    CHECK(o->message[0] != '\0', "%s: failed with status %d but vmsynth_synth_error is empty", out, o->status);
  }
  vmsynth_synth_free(s);
}

/* ---- The checks --------------------------------------------------------- */

struct setup {
  const char* work;
  const char* base;
  const char* launch;
  const char* overlay_path;
  struct buf overlay;
};

static void check_version(void) {
  CHECK(vmsynth_version_number() == VMSYNTH_VERSION_NUMBER, "vmsynth_version_number() is %u, the header says %d",
        vmsynth_version_number(), VMSYNTH_VERSION_NUMBER);
  CHECK(strcmp(vmsynth_version_string(), VMSYNTH_VERSION_STRING) == 0,
        "vmsynth_version_string() is \"%s\", the header says \"%s\"", vmsynth_version_string(), VMSYNTH_VERSION_STRING);
  CHECK(strcmp(vmsynth_status_name(VMSYNTH_E_CANCELLED), "interrupted") == 0, "vmsynth_status_name(9) is \"%s\"",
        vmsynth_status_name(VMSYNTH_E_CANCELLED));
}

static void check_chunked_feed(const struct setup* su) {
  char out[4096];
  struct outcome o;
  uint64_t seed;
  for (seed = 1; seed <= 2; ++seed) {
    snprintf(out, sizeof out, "%s/chunked-%u", su->work, (unsigned)seed);
    synth_fed(su->base, out, NULL, su->overlay.p, su->overlay.n, seed, &o);
    CHECK(o.status == VMSYNTH_OK, "chunked feed (seed %u): status %d: %s", (unsigned)seed, o.status, o.message);
    if (o.status == VMSYNTH_OK) same_vm("chunked feed", out, su->launch);
    remove_tree(out);
  }
}

struct concurrent_job {
  const struct setup* su;
  char out[4096];
  uint64_t seed;
  struct outcome o;
};

static void* concurrent_main(void* arg) {
  struct concurrent_job* j = arg;
  vmsynth_params* p = vmsynth_params_new();
  if (p == NULL || vmsynth_params_set(p, "threads", "2") != VMSYNTH_OK) {
    j->o.status = -1;
    snprintf(j->o.message, sizeof j->o.message, "vmsynth_params_new/set failed");
  } else {
    synth_fed(j->su->base, j->out, p, j->su->overlay.p, j->su->overlay.n, j->seed, &j->o);
  }
  vmsynth_params_free(p);
  return NULL;
}

static void check_concurrent(const struct setup* su) {
  enum { kJobs = 8 };
  struct concurrent_job jobs[kJobs];
  pthread_t threads[kJobs];
  int i;
  for (i = 0; i < kJobs; ++i) {
    jobs[i].su = su;
    jobs[i].seed = 100 + (uint64_t)i;
    snprintf(jobs[i].out, sizeof jobs[i].out, "%s/concurrent-%d", su->work, i);
    if (pthread_create(&threads[i], NULL, concurrent_main, &jobs[i]) != 0) die("pthread_create failed");
  }
  for (i = 0; i < kJobs; ++i) pthread_join(threads[i], NULL);
  for (i = 0; i < kJobs; ++i) {
    CHECK(jobs[i].o.status == VMSYNTH_OK, "concurrent synthesis %d of %d: status %d: %s", i + 1, kJobs,
          jobs[i].o.status, jobs[i].o.message);
    if (jobs[i].o.status == VMSYNTH_OK) same_vm("concurrent synthesis", jobs[i].out, su->launch);
    remove_tree(jobs[i].out);
  }
}

/* The canceller thread: waits until the feeder is half way, cancels. */
struct canceller {
  vmsynth_synth* s;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int go;        /* set by the feeder */
  int cancelled; /* set once vmsynth_synth_cancel returned */
};

static void* canceller_main(void* arg) {
  struct canceller* c = arg;
  pthread_mutex_lock(&c->mu);
  while (!c->go) pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  vmsynth_synth_cancel(c->s);
  pthread_mutex_lock(&c->mu);
  c->cancelled = 1;
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

static void check_cancel_mid_stream(const struct setup* su) {
  char out[4096];
  struct canceller c;
  pthread_t t;
  size_t at = 0, half = su->overlay.n / 2;
  int rc = VMSYNTH_OK, fed_after_cancel = 0;
  snprintf(out, sizeof out, "%s/cancelled", su->work);
  memset(&c, 0, sizeof c);
  pthread_mutex_init(&c.mu, NULL);
  pthread_cond_init(&c.cv, NULL);
  rc = vmsynth_synth_open(&c.s, su->base, out, NULL);
  CHECK(rc == VMSYNTH_OK, "cancel: open returned %d: %s", rc, c.s ? vmsynth_synth_error(c.s) : "(no handle)");
  if (rc != VMSYNTH_OK) {
    vmsynth_synth_free(c.s);
    return;
  }
  if (pthread_create(&t, NULL, canceller_main, &c) != 0) die("pthread_create failed");
  /* Feed 4 KiB at a time; at half way let the canceller go, and go on
   * feeding while it cancels. Once its cancel has returned, the next feed
   * must say so. */
  while (at < su->overlay.n) {
    size_t n = su->overlay.n - at < 4096 ? su->overlay.n - at : 4096;
    int was_cancelled;
    pthread_mutex_lock(&c.mu);
    if (at >= half && !c.go) {
      c.go = 1;
      pthread_cond_signal(&c.cv);
    }
    was_cancelled = c.cancelled;
    pthread_mutex_unlock(&c.mu);
    rc = vmsynth_synth_feed(c.s, su->overlay.p + at, n);
    if (rc != VMSYNTH_OK) break;
    if (was_cancelled) {
      fed_after_cancel = 1;
      break;
    }
    at += n;
  }
  pthread_mutex_lock(&c.mu);
  if (!c.go) { /* the whole overlay went in before half way was seen: cannot happen */
    c.go = 1;
    pthread_cond_signal(&c.cv);
  }
  pthread_mutex_unlock(&c.mu);
  pthread_join(t, NULL);
  CHECK(!fed_after_cancel, "cancel: vmsynth_synth_feed returned OK after vmsynth_synth_cancel had returned");
  CHECK(rc == VMSYNTH_OK || rc == VMSYNTH_E_CANCELLED, "cancel: feed returned %d (%s), not VMSYNTH_E_CANCELLED: %s", rc,
        vmsynth_status_name(rc), vmsynth_synth_error(c.s));
  rc = vmsynth_synth_finish(c.s);
  CHECK(rc == VMSYNTH_E_CANCELLED, "cancel: finish returned %d (%s), not VMSYNTH_E_CANCELLED: %s", rc,
        vmsynth_status_name(rc), vmsynth_synth_error(c.s));
  CHECK(strstr(vmsynth_synth_error(c.s), "cancel") != NULL || strstr(vmsynth_synth_error(c.s), "interrupt") != NULL,
        "cancel: the message does not say cancelled or interrupted: \"%s\"", vmsynth_synth_error(c.s));
  nothing_left("cancel, after finish", out);
  vmsynth_synth_free(c.s);
  nothing_left("cancel, after free", out);
  pthread_mutex_destroy(&c.mu);
  pthread_cond_destroy(&c.cv);
}

static void check_free_unfinished(const struct setup* su) {
  char out[4096];
  vmsynth_synth* s = NULL;
  int rc;
  snprintf(out, sizeof out, "%s/unfinished", su->work);
  rc = vmsynth_synth_open(&s, su->base, out, NULL);
  CHECK(rc == VMSYNTH_OK, "free unfinished: open returned %d", rc);
  if (rc == VMSYNTH_OK) {
    rc = vmsynth_synth_feed(s, su->overlay.p, su->overlay.n / 2);
    CHECK(rc == VMSYNTH_OK, "free unfinished: feeding half the overlay returned %d: %s", rc, vmsynth_synth_error(s));
  }
  vmsynth_synth_free(s);
  nothing_left("free unfinished", out);
  /* And a handle freed before anything was fed. */
  s = NULL;
  rc = vmsynth_synth_open(&s, su->base, out, NULL);
  CHECK(rc == VMSYNTH_OK, "free unfed: open returned %d", rc);
  vmsynth_synth_free(s);
  nothing_left("free unfed", out);
}

/* ---- Bad inputs (tests/cli/bad_input_test.cc) --------------------------- */

static uint16_t le16(const unsigned char* p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const unsigned char* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Overlay format constants (docs/overlay-format.md). */
#define FILE_HEADER_SIZE 256
#define FRAME_HEADER_SIZE 96
#define TRAILER_SIZE (8 + 8 * 5 + 16)
#define FRAME_TYPE_BLOCKS 1

/* The offset of the first blocks frame (with a payload if want_payload),
 * its stored table and payload sizes. */
static size_t find_blocks_frame(const struct buf* ov, int want_payload, uint32_t* table, uint32_t* payload) {
  size_t at = FILE_HEADER_SIZE;
  while (at + FRAME_HEADER_SIZE <= ov->n) {
    const unsigned char* h = ov->p + at;
    *table = le32(h + 16);
    *payload = le32(h + 24);
    if (le16(h + 4) == FRAME_TYPE_BLOCKS && (!want_payload || *payload > 0)) return at;
    at += FRAME_HEADER_SIZE + (size_t)*table + *payload;
  }
  die("the overlay has no blocks frame%s", want_payload ? " with a payload" : "");
  return 0;
}

/* A copy of the good overlay with its first n bytes, one byte XORed at `flip`
 * (if flip < n). */
static struct buf damaged(const struct buf* good, size_t n, size_t flip, unsigned char mask) {
  struct buf b;
  b.n = n;
  b.p = malloc(n ? n : 1);
  if (b.p == NULL) die("out of memory");
  memcpy(b.p, good->p, n);
  if (flip < n) b.p[flip] ^= mask;
  return b;
}

/* 1 if the JSON text has "key": "value" (any spacing). */
static int json_has(const char* json, const char* key, const char* value) {
  char quoted[256];
  const char* at = json;
  snprintf(quoted, sizeof quoted, "\"%s\"", key);
  while ((at = strstr(at, quoted)) != NULL) {
    const char* v = at + strlen(quoted);
    while (*v == ' ' || *v == '\n' || *v == '\t' || *v == '\r') ++v;
    if (*v == ':') {
      ++v;
      while (*v == ' ' || *v == '\n' || *v == '\t' || *v == '\r') ++v;
      if (*v == '"' && strncmp(v + 1, value, strlen(value)) == 0 && v[1 + strlen(value)] == '"') return 1;
    }
    at = v;
  }
  return 0;
}

struct bad_case {
  const char* name;
  const char* base; /* NULL: the good base */
  struct buf overlay;
  const char* disk_format; /* NULL: default */
  int status;
  const char* needle;
};

/* Synthesizes a bad case through a handle and through vmsynth_synthesize;
 * both must fail with its status, name it in words, and leave nothing. */
static void expect_failure(const struct setup* su, const struct bad_case* bc) {
  char out[4096], path[4096];
  struct outcome o;
  vmsynth_params* p = vmsynth_params_new();
  const char* base = bc->base ? bc->base : su->base;
  char* json = NULL;
  int rc;
  if (p == NULL) die("vmsynth_params_new failed");
  if (bc->disk_format != NULL) {
    rc = vmsynth_params_set(p, "disk_format", bc->disk_format);
    CHECK(rc == VMSYNTH_OK, "%s: params_set disk_format %s returned %d", bc->name, bc->disk_format, rc);
  }
  snprintf(out, sizeof out, "%s/out", su->work);

  synth_fed(base, out, p, bc->overlay.p, bc->overlay.n, 7, &o);
  CHECK(o.status == bc->status, "%s (fed): status %d (%s), want %d (%s); message: %s", bc->name, o.status,
        vmsynth_status_name(o.status), bc->status, vmsynth_status_name(bc->status), o.message);
  CHECK(strstr(o.message, bc->needle) != NULL, "%s (fed): the message does not say \"%s\": \"%s\"", bc->name,
        bc->needle, o.message);
  nothing_left(bc->name, out);

  snprintf(path, sizeof path, "%s/bad.vmo", su->work);
  write_whole(path, bc->overlay.p, bc->overlay.n);
  rc = vmsynth_synthesize(base, path, out, p, &json);
  CHECK(rc == bc->status, "%s (vmsynth_synthesize): status %d, want %d; result: %s", bc->name, rc, bc->status,
        json ? json : "NULL");
  CHECK(json != NULL && json_has(json, "code", vmsynth_status_name(bc->status)) && strstr(json, bc->needle) != NULL,
        "%s (vmsynth_synthesize): the result does not have code \"%s\" and \"%s\": %s", bc->name,
        vmsynth_status_name(bc->status), bc->needle, json ? json : "NULL");
  vmsynth_free(json);
  nothing_left(bc->name, out);
  remove(path);
  vmsynth_params_free(p);
}

/* A VM directory with random images of the given sizes. */
static void make_random_vm(const char* dir, size_t memory, size_t disk, uint64_t seed) {
  char path[4096];
  struct buf b;
  size_t i;
  uint64_t state = seed;
  if (mkdir(dir, 0755) != 0) die("cannot create %s: %s", dir, strerror(errno));
  b.n = memory > disk ? memory : disk;
  b.p = malloc(b.n);
  if (b.p == NULL) die("out of memory");
  for (i = 0; i < b.n; ++i) b.p[i] = (unsigned char)(next_random(&state) >> 56);
  join_path(path, sizeof path, dir, "memory.img");
  write_whole(path, b.p, memory);
  join_path(path, sizeof path, dir, "disk.img");
  write_whole(path, b.p, disk);
  buf_free(&b);
}

/* A copy of a VM directory with byte `at` of memory.img flipped. */
static void make_altered_copy(const char* dir, const char* from, size_t at) {
  size_t i;
  if (mkdir(dir, 0755) != 0) die("cannot create %s: %s", dir, strerror(errno));
  for (i = 0; i < VM_FILE_COUNT; ++i) {
    char src[4096], dst[4096];
    struct buf b;
    join_path(src, sizeof src, from, kVmFiles[i]);
    join_path(dst, sizeof dst, dir, kVmFiles[i]);
    if (read_whole(src, &b) != 0) continue;
    if (strcmp(kVmFiles[i], "memory.img") == 0) {
      if (at >= b.n) die("%s is too small", src);
      b.p[at] ^= 1;
    }
    write_whole(dst, b.p, b.n);
    buf_free(&b);
  }
}

static void check_bad_inputs(const struct setup* su) {
  const struct buf* g = &su->overlay;
  char other[4096], same_size[4096], out[4096], keep[4096], path[4096];
  struct bad_case cases[16];
  size_t count = 0, i, at;
  uint32_t table, payload;
  uint64_t base_before = vm_fingerprint(su->base);
  struct buf text;
  const char* words[] = {"synthesis ", "cloudlet ", "overlay ", "memory ", "disk ", "launch "};
  uint64_t state = 5;

  snprintf(other, sizeof other, "%s/other-base", su->work);
  make_random_vm(other, 64 * 4096, 96 * 4096, 9);
  snprintf(same_size, sizeof same_size, "%s/same-size-base", su->work);
  make_altered_copy(same_size, su->base, 12345);

  memset(cases, 0, sizeof cases);
#define ADD_CASE(NAME, BASE, BUF, FORMAT, STATUS, NEEDLE) \
  do {                                                    \
    cases[count].name = NAME;                             \
    cases[count].base = BASE;                             \
    cases[count].overlay = BUF;                           \
    cases[count].disk_format = FORMAT;                    \
    cases[count].status = STATUS;                         \
    cases[count].needle = NEEDLE;                         \
    ++count;                                              \
  } while (0)
  ADD_CASE("TruncatedOverlay", NULL, damaged(g, g->n / 2, g->n, 0), NULL, VMSYNTH_E_CORRUPT, "truncated");
  ADD_CASE("TruncatedAtTheEndFrame", NULL, damaged(g, g->n - FRAME_HEADER_SIZE - TRAILER_SIZE, g->n, 0), NULL,
           VMSYNTH_E_CORRUPT, "before its end frame");
  ADD_CASE("FlippedByteInHeader", NULL, damaged(g, g->n, 30, 0x10), NULL, VMSYNTH_E_CORRUPT,
           "overlay header checksum mismatch");
  at = find_blocks_frame(g, 0, &table, &payload);
  ADD_CASE("FlippedByteInFrameMetadata", NULL, damaged(g, g->n, at + 32, 0x01), NULL, VMSYNTH_E_CORRUPT,
           "frame header checksum mismatch");
  ADD_CASE("FlippedByteInOpTable", NULL, damaged(g, g->n, at + FRAME_HEADER_SIZE + table / 2, 0x01), NULL,
           VMSYNTH_E_CORRUPT, "op table checksum mismatch");
  at = find_blocks_frame(g, 1, &table, &payload);
  ADD_CASE("FlippedByteInPayload", NULL, damaged(g, g->n, at + FRAME_HEADER_SIZE + table + payload / 2, 0x01), NULL,
           VMSYNTH_E_CORRUPT, "payload checksum mismatch");
  ADD_CASE("FlippedByteInPayload (qcow2)", NULL, damaged(g, g->n, at + FRAME_HEADER_SIZE + table + payload / 2, 0x01),
           "qcow2", VMSYNTH_E_CORRUPT, "payload checksum mismatch");
  ADD_CASE("WrongBase", other, damaged(g, g->n, g->n, 0), NULL, VMSYNTH_E_WRONG_BASE, "another base VM");
  ADD_CASE("WrongBaseOfTheSameSize", same_size, damaged(g, g->n, g->n, 0), NULL, VMSYNTH_E_WRONG_BASE,
           "another base VM");
  {
    struct buf v = damaged(g, g->n, g->n, 0);
    v.p[8] = 2; /* major version 2 */
    v.p[10] = 0;
    ADD_CASE("UnknownVersion", NULL, v, NULL, VMSYNTH_E_UNSUPPORTED, "version 2.0 is not supported");
  }
  text.n = 1000;
  text.p = malloc(text.n + 16);
  if (text.p == NULL) die("out of memory");
  for (i = 0; i < text.n;) {
    const char* w = words[next_random(&state) % 6];
    size_t len = strlen(w);
    memcpy(text.p + i, w, len);
    i += len;
  }
  ADD_CASE("NotAnOverlay", NULL, text, NULL, VMSYNTH_E_CORRUPT, "not a vmsynth overlay");
#undef ADD_CASE

  for (i = 0; i < count; ++i) {
    expect_failure(su, &cases[i]);
    buf_free(&cases[i].overlay);
  }

  /* Bad parameter values (the command line's --disk-format vmdk,
   * --write-backend aio, --level fast) are refused when set. */
  {
    vmsynth_params* p = vmsynth_params_new();
    int rc;
    if (p == NULL) die("vmsynth_params_new failed");
    const char* const bad[][3] = {{"DiskFormat", "disk_format", "vmdk"},
                                  {"WriteBackend", "write_backend", "aio"},
                                  {"UsageErrors", "level", "fast"}};
    for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
      rc = vmsynth_params_set(p, bad[i][1], bad[i][2]);
      CHECK(rc == VMSYNTH_E_USAGE, "%s: params_set %s %s returned %d, want 2", bad[i][0], bad[i][1], bad[i][2], rc);
      CHECK(strstr(vmsynth_params_error(p), bad[i][1]) != NULL, "%s: vmsynth_params_error does not name %s: \"%s\"",
            bad[i][0], bad[i][1], vmsynth_params_error(p));
    }
    vmsynth_params_free(p);
  }

  /* ExistingOutputDirectoryIsRefused: E_EXISTS naming force, the directory
   * untouched; with force it is replaced. */
  snprintf(out, sizeof out, "%s/existing", su->work);
  if (mkdir(out, 0755) != 0) die("cannot create %s: %s", out, strerror(errno));
  join_path(keep, sizeof keep, out, "keep.txt");
  write_whole(keep, (const unsigned char*)"x", 1);
  {
    struct outcome o;
    vmsynth_params* p = vmsynth_params_new();
    if (p == NULL) die("vmsynth_params_new failed");
    synth_fed(su->base, out, NULL, g->p, g->n, 3, &o);
    CHECK(o.status == VMSYNTH_E_EXISTS, "ExistingOutput: status %d, want 8: %s", o.status, o.message);
    CHECK(strstr(o.message, "force") != NULL, "ExistingOutput: the message does not name force: \"%s\"", o.message);
    CHECK(path_exists(keep), "ExistingOutput: %s was removed", keep);
    join_path(path, sizeof path, out, "disk.img");
    CHECK(!path_exists(path), "ExistingOutput: %s was written", path);
    CHECK(vmsynth_params_set(p, "force", "1") == VMSYNTH_OK, "params_set force 1 failed");
    synth_fed(su->base, out, p, g->p, g->n, 4, &o);
    CHECK(o.status == VMSYNTH_OK, "ExistingOutput with force: status %d: %s", o.status, o.message);
    CHECK(!path_exists(keep), "ExistingOutput with force: %s is still there", keep);
    if (o.status == VMSYNTH_OK) same_vm("ExistingOutput with force", out, su->launch);
    vmsynth_params_free(p);
    remove_tree(out);
  }

  /* UsageErrors: overlay create over an existing file is E_EXISTS. */
  {
    char* json = NULL;
    int rc = vmsynth_overlay_create(su->base, su->launch, su->overlay_path, NULL, &json);
    CHECK(rc == VMSYNTH_E_EXISTS, "overlay create over an existing file: status %d, want 8: %s", rc,
          json ? json : "NULL");
    CHECK(json != NULL && json_has(json, "code", "exists"), "overlay create over an existing file: result %s",
          json ? json : "NULL");
    vmsynth_free(json);
  }

  CHECK(vm_fingerprint(su->base) == base_before, "the base VM %s changed", su->base);
  remove_tree(other);
  remove_tree(same_size);
}

int main(int argc, char** argv) {
  struct setup su;
  if (argc != 5) {
    fprintf(stderr, "usage: consumer WORK_DIR BASE_DIR LAUNCH_DIR OVERLAY\n");
    return 2;
  }
  su.work = argv[1];
  su.base = argv[2];
  su.launch = argv[3];
  su.overlay_path = argv[4];
  read_or_die(su.overlay_path, &su.overlay);
  if (su.overlay.n < 2 * MIB) fprintf(stderr, "consumer: note: the overlay is only %zu bytes\n", su.overlay.n);

  check_version();
  check_chunked_feed(&su);
  check_concurrent(&su);
  check_cancel_mid_stream(&su);
  check_free_unfinished(&su);
  check_bad_inputs(&su);

  buf_free(&su.overlay);
  if (g_failures > 0) {
    fprintf(stderr, "consumer: %d of %d checks FAILED\n", g_failures, g_checks);
    return 1;
  }
  printf("consumer: all %d checks passed (libvmsynth %s)\n", g_checks, vmsynth_version_string());
  return 0;
}

/* vmsynth: dynamic VM synthesis for cloudlets, the public C API.
 *
 * This header is the stable ABI of libvmsynth.so.0: plain C (C99 and C++),
 * opaque handles, integer status codes, no C++ types or exceptions across the
 * boundary. docs/api.md is the guide (lifecycle, ownership, threading, error
 * model, versioning, complete examples); this file is the reference.
 *
 * Three kinds of call:
 *   - a synthesis handle (vmsynth_synth_*): open it on a base VM and an output
 *     directory, push the overlay's bytes in as they arrive (feed), finish;
 *   - one-call operations (vmsynth_synthesize, vmsynth_overlay_create,
 *     vmsynth_overlay_info, vmsynth_base_id) that return a JSON document;
 *   - options (vmsynth_params_*) and cancel tokens (vmsynth_cancel_*) that
 *     both kinds take.
 *
 * Status codes equal the vmsynth command's exit statuses. Every function that
 * can fail returns one; the words of a failure are in vmsynth_synth_error()
 * for a handle and in the result JSON of a one-call operation.
 *
 * Strings are UTF-8 (paths: bytes, as the kernel takes them), NUL-terminated,
 * borrowed for the duration of the call unless stated otherwise. A string the
 * library returns through a char** is the caller's, freed with vmsynth_free().
 */
#ifndef VMSYNTH_VMSYNTH_H
#define VMSYNTH_VMSYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "vmsynth/version.h"

#if defined(__GNUC__) && !defined(VMSYNTH_STATIC)
#define VMSYNTH_API __attribute__((visibility("default")))
#else
#define VMSYNTH_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Version ------------------------------------------------------------
 * The library's version at run time (the macros in vmsynth/version.h give
 * the header's). MAJOR*10000 + MINOR*100 + PATCH. Thread-safe. */
VMSYNTH_API unsigned vmsynth_version_number(void);
VMSYNTH_API const char *vmsynth_version_string(void); /* "0.1.0"; static storage */

/* ---- Status codes -------------------------------------------------------
 * The same numbers as the vmsynth command's exit statuses. */
#define VMSYNTH_OK 0
#define VMSYNTH_E_USAGE 2       /* bad argument, parameter, or call order */
#define VMSYNTH_E_CORRUPT 3     /* the overlay is damaged, truncated or inconsistent */
#define VMSYNTH_E_WRONG_BASE 4  /* the overlay was made for another base VM */
#define VMSYNTH_E_WRONG_KEY 5   /* wrong, missing or unexpected decryption key */
#define VMSYNTH_E_IO 6          /* the operating system refused a read, write, open ... */
#define VMSYNTH_E_UNSUPPORTED 7 /* valid, but not supported here (version, feature, kernel) */
#define VMSYNTH_E_EXISTS 8      /* the output exists and "force" was not set */
#define VMSYNTH_E_CANCELLED 9   /* cancelled (vmsynth_synth_cancel, vmsynth_cancel_request) */
#define VMSYNTH_E_INTERNAL 70   /* a bug in vmsynth, or memory exhausted; nothing was left at the output */

/* "ok", "usage", "corrupt", "wrong-base", "wrong-key", "io", "unsupported",
 * "exists", "interrupted", "internal" (the "code" of the CLI's --json errors),
 * or "unknown". Static storage; thread-safe. */
VMSYNTH_API const char *vmsynth_status_name(int status);

/* Frees a string the library returned through a char** (NULL: nothing). */
VMSYNTH_API void vmsynth_free(void *p);

/* ---- Cancel tokens ------------------------------------------------------
 * A token stops every operation that was given it (vmsynth_params_set_cancel):
 * the operation returns VMSYNTH_E_CANCELLED at its next frame or chunk, also
 * while it waits for input, and removes what it staged. Requests are sticky.
 * One token may serve many operations (cancel a whole session at once).
 * Thread-safety: vmsynth_cancel_request is async-signal-safe and may be called
 * from any thread at any time; free a token only after every operation using
 * it has returned. */
typedef struct vmsynth_cancel vmsynth_cancel;
VMSYNTH_API vmsynth_cancel *vmsynth_cancel_new(void); /* NULL: out of memory */
VMSYNTH_API void vmsynth_cancel_request(vmsynth_cancel *c);
VMSYNTH_API int vmsynth_cancel_requested(const vmsynth_cancel *c); /* 1 once requested, else 0 */
VMSYNTH_API void vmsynth_cancel_free(vmsynth_cancel *c);

/* ---- Parameters ---------------------------------------------------------
 * An options bag, by name, copied by every call that takes one (changing it
 * afterwards affects only later calls). A NULL vmsynth_params* means all
 * defaults. Names and values (strings; numbers in decimal):
 *
 *   synthesis
 *     engine          "parallel" (default) | "serial"
 *     threads         0..256; 0 = one per core (default); the serial engine takes 0 or 1
 *     disk_format     "raw" (default) | "qcow2"
 *     clone           "auto" (default) | "reflink" | "copy-range" | "read-write"
 *     write_backend   "io_uring" (default) | "pwrite"
 *     queue_depth     1..4096 (default 64)
 *     memory_budget   bytes of frames in flight, 16 MiB..1 TiB (default 256 MiB);
 *                     a K, M, G or T suffix (powers of 1024) is accepted
 *     overlay_size    the overlay's size in bytes when known, for progress
 *                     totals of a fed overlay (default 0: unknown)
 *   overlay creation
 *     level           zstd level "1".."22" or "max" (default 9)
 *     threads         as above
 *   any operation
 *     key_file        file holding the key: 32 raw bytes or 64 hex digits
 *     passphrase_file file holding a passphrase (scrypt-stretched)
 *     key             the key itself, 64 hex digits (for a receiver that
 *                     got it from its client, not from a file)
 *     passphrase      the passphrase itself
 *                     (at most one of these four; creation then encrypts;
 *                     synthesis and info then require an encrypted overlay;
 *                     "" unsets)
 *     cache_dir       base-id cache directory (default $VMSYNTH_CACHE_DIR,
 *                     else $XDG_CACHE_HOME/vmsynth, else ~/.cache/vmsynth)
 *     base_id_cache   "1" (default) | "0": remember base ids there
 *     force           "0" (default) | "1": replace an existing output
 *                     (never an input: an output over an input is refused)
 *
 * Flags (base_id_cache, force) also take "true" and "false".
 * vmsynth_params_set returns VMSYNTH_E_USAGE for an unknown name or a bad
 * value (and leaves p unchanged; vmsynth_params_error says why); key files are read when an operation
 * starts. Thread-safety: a vmsynth_params may be read by any number of
 * concurrent calls; changing it must not race any use. */
typedef struct vmsynth_params vmsynth_params;
VMSYNTH_API vmsynth_params *vmsynth_params_new(void); /* NULL: out of memory */
VMSYNTH_API int vmsynth_params_set(vmsynth_params *p, const char *name, const char *value);
/* Why the last vmsynth_params_set on p failed, naming the parameter and what
 * it accepts ("" after a success). Owned by p; valid until the next call on p. */
VMSYNTH_API const char *vmsynth_params_error(const vmsynth_params *p);
/* Progress of the operation: bytes done out of total (total 0 = unknown).
 * For synthesis, overlay bytes consumed (total: the file's size, or
 * overlay_size when fed; 0 otherwise), ending, on success, with a call whose
 * done is every byte of the overlay; for creation, image bytes compared, then
 * bytes encoded (done starts again at 0 when total changes). Stretches that count nothing
 * (checking the base, syncing) make no calls; the phase callback below names
 * them. Called from a library thread, never two calls at once; keep it short
 * and do not call back into the same handle. NULL fn: none. */
VMSYNTH_API int vmsynth_params_set_progress(vmsynth_params *p,
                                            void (*fn)(void *ctx, uint64_t done, uint64_t total), void *ctx);
/* The same with the phase named ("checking base", "applying", "syncing",
 * "finished", ...; lower-case words, valid during the call only), called
 * for every phase, each starting with done 0. Replaces the callback
 * set by vmsynth_params_set_progress and the other way round. */
VMSYNTH_API int vmsynth_params_set_phase_progress(vmsynth_params *p,
                                                  void (*fn)(void *ctx, const char *phase, uint64_t done,
                                                             uint64_t total),
                                                  void *ctx);
/* Operations given p stop when c is requested. Borrowed: c must outlive
 * every operation started with p. NULL: none. A synthesis handle opened
 * with p follows c and still has its own token: vmsynth_synth_cancel stops
 * that handle only. */
VMSYNTH_API int vmsynth_params_set_cancel(vmsynth_params *p, vmsynth_cancel *c);
VMSYNTH_API void vmsynth_params_free(vmsynth_params *p);

/* ---- Synthesis handle ---------------------------------------------------
 * One synthesis: base VM directory + overlay bytes -> launch VM directory.
 *
 *   vmsynth_synth *s;
 *   if (vmsynth_synth_open(&s, base, out, params) != VMSYNTH_OK) ...
 *   while ((n = read(sock, buf, sizeof buf)) > 0)
 *     if (vmsynth_synth_feed(s, buf, n) != VMSYNTH_OK) break;
 *   rc = vmsynth_synth_finish(s);       // verify, sync, rename into place
 *   if (rc != VMSYNTH_OK) fprintf(stderr, "%s\n", vmsynth_synth_error(s));
 *   vmsynth_synth_free(s);
 *
 * The output is built in a staging directory beside out_dir and appears at
 * out_dir only when finish succeeds; on any failure, a cancel, or a free
 * before finish, nothing is left at out_dir. The base is only read.
 * Once feed or finish failed, every later call on the handle returns the
 * same status (and vmsynth_synth_error the same message).
 *
 * Thread-safety: distinct handles are independent and may be used from
 * different threads at once, many in one process. One handle's calls must
 * not run concurrently, except vmsynth_synth_cancel, which may be called
 * from any thread (and a signal handler) at any time before free. */
typedef struct vmsynth_synth vmsynth_synth;

/* Checks the base VM directory and out_dir (exists without force: E_EXISTS;
 * over an input: E_USAGE) and starts the engine, which waits for bytes.
 * *out is set on success and also on most failures (so that
 * vmsynth_synth_error explains them; free it either way); it is NULL only
 * if memory ran out or out was NULL. */
VMSYNTH_API int vmsynth_synth_open(vmsynth_synth **out, const char *base_dir, const char *out_dir,
                                   const vmsynth_params *p);
/* The overlay's next len bytes, in order, in chunks of any size (1 byte and
 * up; len 0 is a no-op). Copies them; blocks while the engine is behind, so
 * memory stays bounded. Returns the engine's failure as soon as it is known,
 * which may be some bytes after the bad ones. */
VMSYNTH_API int vmsynth_synth_feed(vmsynth_synth *s, const void *data, size_t len);
/* Ends the overlay: waits for the engine, which verifies every block, syncs,
 * and renames the output into place. A missing end of overlay is
 * VMSYNTH_E_CORRUPT. */
VMSYNTH_API int vmsynth_synth_finish(vmsynth_synth *s);
/* Reads the whole overlay from `source` and finishes, in place of feed and
 * finish, on a handle nothing was fed to: a file path, "-" (standard input),
 * "tcp://HOST:PORT" (connect) or "tcp-listen://HOST:PORT" (accept one
 * connection). */
VMSYNTH_API int vmsynth_synth_finish_from(vmsynth_synth *s, const char *source);
/* Stops the synthesis: feed and finish return VMSYNTH_E_CANCELLED, staged
 * output is removed. Async-signal-safe; any thread; idempotent. */
VMSYNTH_API void vmsynth_synth_cancel(vmsynth_synth *s);
/* The last failure in words, naming what is wrong and where ("" if none).
 * Owned by s; valid until the next call on s. */
VMSYNTH_API const char *vmsynth_synth_error(const vmsynth_synth *s);
/* After a successful finish: the result as JSON, the document
 * `vmsynth synthesize --json` prints (ok, out, engine, threads, base_id,
 * overlay_bytes, frames, blocks_written, ops, seconds, ...; seconds has
 * "since_first_byte", from the overlay's first byte to the finished
 * output, the wait a launch adds to). *json is the
 * caller's (vmsynth_free). Before that: VMSYNTH_E_USAGE. */
VMSYNTH_API int vmsynth_synth_stats_json(const vmsynth_synth *s, char **json);
/* Frees s. Unfinished: cancels, waits for the engine to stop, removes
 * everything staged; nothing is at out_dir. NULL: nothing. */
VMSYNTH_API void vmsynth_synth_free(vmsynth_synth *s);

/* ---- One-call operations ------------------------------------------------
 * Each runs to completion on the calling thread (and the library's workers)
 * and, when result_json is not NULL, stores a JSON document there, the
 * caller's to vmsynth_free: on success what the matching command prints with
 * --json; on failure {"ok": false, "error": {"code", "message", "context"}}.
 * Cancel them with a token (vmsynth_params_set_cancel): synthesis and
 * creation stop at their next frame or chunk; overlay info only while it
 * waits for input; the base id (one pass over the base) runs to its end.
 * Thread-safe: any number may run at once. */

/* vmsynth synthesize --base base_dir --overlay overlay --out out_dir:
 * overlay is a source as in vmsynth_synth_finish_from. */
VMSYNTH_API int vmsynth_synthesize(const char *base_dir, const char *overlay, const char *out_dir,
                                   const vmsynth_params *p, char **result_json);
/* vmsynth overlay create --base base_dir --launch launch_dir -o overlay_path:
 * writes the overlay under a temporary name and renames it into place. */
VMSYNTH_API int vmsynth_overlay_create(const char *base_dir, const char *launch_dir, const char *overlay_path,
                                       const vmsynth_params *p, char **result_json);
/* vmsynth overlay info: the overlay's headers and op tables (payloads are
 * not checked); overlay is a path or "-". Uses key_file/passphrase_file. */
VMSYNTH_API int vmsynth_overlay_info(const char *overlay, const vmsynth_params *p, char **result_json);
/* The overlay's file header, from its first VMSYNTH_OVERLAY_HEADER_BYTES
 * bytes (more are ignored), before any of the rest has arrived: which base VM
 * it needs and how large the launch VM will be, so that a receiver can pick
 * the base and check space before it opens a synthesis.
 * {"ok": true, "version", "base_id", "base_memory_bytes", "base_disk_bytes",
 * "launch_memory_bytes", "launch_disk_bytes", "encrypted"}. The header's
 * magic, version, checksum and limits are checked (VMSYNTH_E_CORRUPT,
 * VMSYNTH_E_UNSUPPORTED for a newer version); fewer than
 * VMSYNTH_OVERLAY_HEADER_BYTES bytes is VMSYNTH_E_CORRUPT ("truncated").
 * Nothing is authenticated yet: synthesis checks the rest. Thread-safe. */
#define VMSYNTH_OVERLAY_HEADER_BYTES 256
VMSYNTH_API int vmsynth_overlay_header(const void *data, size_t len, char **result_json);
/* The base VM id of a VM directory, as overlays name it:
 * {"ok": true, "base_dir": ..., "base_id": "<32 hex digits>"}. Uses (and
 * fills) the base-id cache unless base_id_cache is "0". */
VMSYNTH_API int vmsynth_base_id(const char *base_dir, const vmsynth_params *p, char **result_json);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VMSYNTH_VMSYNTH_H */

// WriteQueue: asynchronous positional writes to a fixed set of output files.
//
// It is the synthesis writer node's way to keep the disk busy: the caller hands
// over (file, offset, bytes, tag) requests and gets each tag back through the
// completion callback once the bytes are on their way to the page cache (the
// queue does not fsync; that is the caller's job at the end). Two backends:
// io_uring (liburing, up to queue_depth requests in flight, batched submission,
// registered files) and plain pwrite (synchronous, same contract). io_uring is
// used unless the options or VMSYNTH_NO_IO_URING=1 ask for pwrite, or the
// kernel refuses it (ENOSYS, EPERM, ENOMEM, EINVAL at ring setup, or no
// IORING_OP_WRITE); backend() and fallback_reason() tell which and why.
//
// Ownership:
//  - The file descriptors are borrowed: they must stay open until the queue is
//    destroyed. The queue never closes them.
//  - A request's bytes are borrowed too: the memory behind `data` must stay
//    valid and unchanged from write() until on_complete(tag) has been called
//    for that request (or until the queue has been destroyed). That callback is
//    the signal to recycle the buffer.
//  - The destructor waits for requests still in flight (the kernel may still be
//    reading their buffers) but does not call on_complete for them and drops
//    any error.
//
// Errors: the first failed request is remembered (kIo, naming the file and the
// offset). Every later write() and every drain() throws it; nothing new is
// accepted after a failure. on_complete is still called for the failed request
// and for every other accepted request, so buffers always come back.
//
// Thread safety: none. One thread at a time calls write()/drain()/submit();
// on_complete runs on that thread, inside those calls. on_complete must not
// throw and must not call back into the queue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace vmsynth::io {

struct WriteQueueOptions {
  // Requests in flight at most (io_uring backend), also the ring size.
  // Unit: requests. Default 64. Range 1..4096 (else open() throws kUsage).
  unsigned queue_depth = 64;
  // Prepared requests that trigger a submission to the kernel; fewer are held
  // back until the ring is full, submit() or drain(). Unit: requests.
  // Default 8. Range 1..queue_depth (larger values are clamped to queue_depth).
  unsigned submit_batch = 8;
  // Largest single kernel request; a longer write is sent in pieces, one after
  // the other, through the same path that resubmits short writes. Unit: bytes.
  // Default 1 GiB. Range 4096..1 GiB (values outside are clamped).
  size_t max_request_bytes = size_t{1} << 30;
  // Use the pwrite backend even when io_uring works. The environment variable
  // VMSYNTH_NO_IO_URING=1 has the same effect. Default false.
  bool force_pwrite = false;
  // Register the fds with the ring (IORING_REGISTER_FILES, IOSQE_FIXED_FILE),
  // which saves a file lookup per request. If registration fails the queue
  // silently uses plain fds. Default true.
  bool register_files = true;
};

class WriteQueue {
 public:
  // Called once per accepted request, when the queue no longer uses its buffer.
  using Completion = std::function<void(uint64_t tag)>;

  // Opens a queue over `fds` (addressed by index in write()). `names` are the
  // files' paths, used in error messages; missing entries read "file #<i>".
  // Throws kUsage for bad options, kIo if io_uring fails in a way that is not
  // a missing feature.
  static std::unique_ptr<WriteQueue> open(std::vector<int> fds, WriteQueueOptions opts,
                                          Completion on_complete,
                                          std::vector<std::string> names = {});

  virtual ~WriteQueue() = default;
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  // Queues a write of `data` at `offset` of file `file_index`.
  // REQUIRES: file_index < number of fds (else throws kUsage); `data` stays
  // valid until on_complete(tag). May block, reaping completions (and calling
  // on_complete) while the queue is full. An empty `data` completes at once.
  // Throws the first earlier error; the request is then not accepted and no
  // callback will come for it.
  virtual void write(unsigned file_index, uint64_t offset, std::span<const std::byte> data,
                     uint64_t tag) = 0;

  // Hands prepared requests to the kernel without waiting. Call it when the
  // producer is about to block on its input, so held-back requests do not
  // idle. A no-op for the pwrite backend.
  virtual void submit() = 0;

  // Waits until every accepted request has completed (all callbacks done),
  // then throws the first error, if any.
  virtual void drain() = 0;

  // "io_uring" or "pwrite".
  virtual std::string_view backend() const = 0;
  // Empty when io_uring is used; else why not, e.g.
  // "io_uring_queue_init: Operation not permitted".
  virtual std::string_view fallback_reason() const = 0;

 protected:
  WriteQueue() = default;
};

}  // namespace vmsynth::io

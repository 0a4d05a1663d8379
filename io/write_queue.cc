#include "io/write_queue.h"

#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include "common/error.h"

namespace vmsynth::io {

namespace {

constexpr unsigned kMaxQueueDepth = 4096;
constexpr size_t kMinRequestBytes = 4096;
constexpr size_t kMaxRequestBytes = size_t{1} << 30;

// The parts both backends share: the files, the callback and the first error.
class QueueCommon : public WriteQueue {
 protected:
  QueueCommon(std::vector<int> fds, std::vector<std::string> names, Completion on_complete)
      : fds_(std::move(fds)), names_(std::move(names)), on_complete_(std::move(on_complete)) {}

  // Throws kUsage for a bad index, the remembered error if there is one.
  void check_accept(unsigned file_index) const {
    if (error_) throw *error_;
    if (file_index >= fds_.size()) {
      throw Error(ErrorCode::kUsage, "write to file index " + std::to_string(file_index) +
                                         " of a queue over " + std::to_string(fds_.size()) +
                                         " files");
    }
  }

  void fail(unsigned file_index, uint64_t offset, int err) {
    if (error_) return;
    std::string name = file_index < names_.size() && !names_[file_index].empty()
                           ? names_[file_index]
                           : "file #" + std::to_string(file_index);
    error_ = io_error("cannot write at offset " + std::to_string(offset) + " of", name, err);
  }

  void complete(uint64_t tag) noexcept {
    if (on_complete_) on_complete_(tag);
  }

  std::vector<int> fds_;
  std::vector<std::string> names_;
  Completion on_complete_;
  std::optional<Error> error_;
};

// Synchronous fallback: every write() is done before it returns.
class PwriteQueue final : public QueueCommon {
 public:
  PwriteQueue(std::vector<int> fds, std::vector<std::string> names, Completion on_complete,
              std::string reason)
      : QueueCommon(std::move(fds), std::move(names), std::move(on_complete)),
        reason_(std::move(reason)) {}

  void write(unsigned file_index, uint64_t offset, std::span<const std::byte> data,
             uint64_t tag) override {
    check_accept(file_index);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(fds_[file_index], data.data() + done, data.size() - done,
                           static_cast<off_t>(offset + done));
      if (n > 0) {
        done += static_cast<size_t>(n);
      } else if (n == 0) {
        fail(file_index, offset + done, EIO);  // no progress: would loop forever
        break;
      } else if (errno != EINTR && errno != EAGAIN) {
        fail(file_index, offset + done, errno);
        break;
      }
    }
    complete(tag);
  }

  void submit() override {}

  void drain() override {
    if (error_) throw *error_;
  }

  std::string_view backend() const override { return "pwrite"; }
  std::string_view fallback_reason() const override { return reason_; }

 private:
  std::string reason_;
};

class UringQueue final : public QueueCommon {
 public:
  UringQueue(std::vector<int> fds, std::vector<std::string> names, Completion on_complete,
             const WriteQueueOptions& opts)
      : QueueCommon(std::move(fds), std::move(names), std::move(on_complete)),
        batch_(std::clamp(opts.submit_batch, 1u, opts.queue_depth)),
        max_request_(std::clamp(opts.max_request_bytes, kMinRequestBytes, kMaxRequestBytes)),
        slots_(opts.queue_depth) {
    free_.reserve(slots_.size());
    for (unsigned i = static_cast<unsigned>(slots_.size()); i-- > 0;) free_.push_back(i);
  }

  ~UringQueue() override {
    if (!ring_live_) return;
    // The kernel may still read the callers' buffers; wait for it before they
    // can be freed. No callbacks, no resubmission, errors dropped.
    closing_ = true;
    try {
      submit_prepared();
      while (in_kernel_ > 0) reap(true);
    } catch (...) {
    }
    // The kernel tears a ring down asynchronously (a workqueue item runs after
    // close), and until then the registered files stay referenced: deleting
    // them would free their space only later, so a retry right after a
    // disk-full failure failed too. Unregistering is synchronous.
    if (fixed_) (void)::io_uring_unregister_files(&ring_);
    ::io_uring_queue_exit(&ring_);
  }

  // Sets up the ring. Returns false with `reason` for a missing feature (the
  // caller falls back to pwrite); throws kIo for other failures.
  bool init(const WriteQueueOptions& opts, std::string& reason) {
    int r = ::io_uring_queue_init(opts.queue_depth, &ring_, 0);
    if (r < 0) {
      if (r == -ENOSYS || r == -EPERM || r == -ENOMEM || r == -EINVAL) {
        reason = std::string("io_uring_queue_init: ") + std::strerror(-r);
        return false;
      }
      throw io_error("cannot set up io_uring", "", -r);
    }
    ring_live_ = true;
    // IORING_OP_WRITE needs Linux 5.6; older kernels would fail every request.
    io_uring_probe* probe = ::io_uring_get_probe_ring(&ring_);
    bool has_write = probe && io_uring_opcode_supported(probe, IORING_OP_WRITE);
    if (probe) ::io_uring_free_probe(probe);
    if (!has_write) {
      reason = "io_uring: kernel lacks IORING_OP_WRITE";
      ::io_uring_queue_exit(&ring_);
      ring_live_ = false;
      return false;
    }
    if (opts.register_files && !fds_.empty()) {
      fixed_ =
          ::io_uring_register_files(&ring_, fds_.data(), static_cast<unsigned>(fds_.size())) == 0;
    }
    return true;
  }

  void write(unsigned file_index, uint64_t offset, std::span<const std::byte> data,
             uint64_t tag) override {
    check_accept(file_index);
    if (data.empty()) {
      complete(tag);
      return;
    }
    while (free_.empty()) reap(true);
    check_accept(file_index);  // a request may have failed while we waited
    unsigned slot = free_.back();
    free_.pop_back();
    slots_[slot] = Request{offset, data.data(), data.size(), 0, tag, file_index};
    prepare(slot);
    if (prepared_ >= batch_) submit_prepared();
    // Hand finished buffers back early; costs no system call.
    if (::io_uring_cq_ready(&ring_) > 0) reap(false);
  }

  void submit() override { submit_prepared(); }

  void drain() override {
    submit_prepared();
    while (free_.size() < slots_.size()) reap(true);
    if (error_) throw *error_;
  }

  std::string_view backend() const override { return "io_uring"; }
  std::string_view fallback_reason() const override { return {}; }

 private:
  struct Request {
    uint64_t offset = 0;
    const std::byte* data = nullptr;
    size_t size = 0;
    size_t done = 0;  // bytes already written
    uint64_t tag = 0;
    unsigned file = 0;
  };

  // Queues an SQE for the part of `slot` not yet written.
  void prepare(unsigned slot) {
    io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
    if (!sqe) {
      // Cannot happen while SQEs <= busy slots <= ring size, but be safe.
      submit_prepared();
      sqe = ::io_uring_get_sqe(&ring_);
      if (!sqe) throw Error(ErrorCode::kIo, "io_uring submission queue stays full");
    }
    const Request& q = slots_[slot];
    size_t len = std::min(q.size - q.done, max_request_);
    int fd = fixed_ ? static_cast<int>(q.file) : fds_[q.file];
    ::io_uring_prep_write(sqe, fd, q.data + q.done, static_cast<unsigned>(len), q.offset + q.done);
    if (fixed_) ::io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
    ::io_uring_sqe_set_data64(sqe, slot);
    ++prepared_;
  }

  void submit_prepared() {
    while (prepared_ > 0) {
      int r = ::io_uring_submit(&ring_);
      if (r >= 0) {
        account_submitted(r);
      } else if (r == -EBUSY || r == -EAGAIN) {
        // The kernel is short of resources or the CQ overflowed: make room.
        if (in_kernel_ > 0) reap(true);
      } else if (r != -EINTR) {
        throw io_error("io_uring_submit failed", "", -r);
      }
    }
  }

  void account_submitted(int r) {
    unsigned n = std::min(static_cast<unsigned>(r), prepared_);
    prepared_ -= n;
    in_kernel_ += n;
  }

  // Reaps every available completion; with `wait`, first submits what is
  // prepared and blocks until at least one completion is there.
  void reap(bool wait) {
    if (wait && ::io_uring_cq_ready(&ring_) == 0) {
      for (;;) {
        int r = ::io_uring_submit_and_wait(&ring_, 1);
        if (r >= 0) {
          account_submitted(r);
          break;
        }
        if (r == -EINTR) continue;
        if ((r == -EBUSY || r == -EAGAIN) && ::io_uring_cq_ready(&ring_) > 0) break;
        if (r == -EAGAIN) continue;
        throw io_error("io_uring wait failed", "", -r);
      }
    }
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      handle(static_cast<unsigned>(::io_uring_cqe_get_data64(cqe)), cqe->res);
    }
    ::io_uring_cq_advance(&ring_, seen);
    if (!finished_.empty()) {
      std::vector<uint64_t> tags;
      tags.swap(finished_);
      for (uint64_t t : tags) complete(t);
      tags.clear();
      finished_.swap(tags);  // keep the capacity
    }
  }

  void handle(unsigned slot, int res) {
    --in_kernel_;
    Request& q = slots_[slot];
    if (!closing_) {
      if (res == -EAGAIN || res == -EINTR) {
        prepare(slot);
        return;
      }
      if (res > 0) {
        q.done += static_cast<size_t>(res);
        if (q.done < q.size) {  // short write (or a piece of a long one)
          prepare(slot);
          return;
        }
      } else {
        fail(q.file, q.offset + q.done, res == 0 ? EIO : -res);
      }
      finished_.push_back(q.tag);
    }
    free_.push_back(slot);
  }

  io_uring ring_{};
  bool ring_live_ = false;
  bool fixed_ = false;
  bool closing_ = false;
  unsigned batch_;
  size_t max_request_;
  unsigned prepared_ = 0;   // SQEs prepared, not yet submitted
  unsigned in_kernel_ = 0;  // submitted, completion not yet reaped
  std::vector<Request> slots_;
  std::vector<unsigned> free_;
  std::vector<uint64_t> finished_;  // tags whose callbacks are due
};

bool io_uring_disabled_by_env() {
  const char* v = std::getenv("VMSYNTH_NO_IO_URING");
  return v && *v && std::strcmp(v, "0") != 0;
}

}  // namespace

std::unique_ptr<WriteQueue> WriteQueue::open(std::vector<int> fds, WriteQueueOptions opts,
                                             Completion on_complete,
                                             std::vector<std::string> names) {
  if (opts.queue_depth < 1 || opts.queue_depth > kMaxQueueDepth) {
    throw Error(ErrorCode::kUsage, "write queue depth " + std::to_string(opts.queue_depth) +
                                       " is out of range; use 1.." +
                                       std::to_string(kMaxQueueDepth));
  }
  std::string reason;
  if (opts.force_pwrite) {
    reason = "pwrite requested";
  } else if (io_uring_disabled_by_env()) {
    reason = "VMSYNTH_NO_IO_URING is set";
  } else {
    auto q = std::make_unique<UringQueue>(fds, names, on_complete, opts);
    if (q->init(opts, reason)) return q;
  }
  return std::make_unique<PwriteQueue>(std::move(fds), std::move(names), std::move(on_complete),
                                       std::move(reason));
}

}  // namespace vmsynth::io

#include "engine/cancel.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

#include "common/error.h"

namespace vmsynth {

CancelToken::CancelToken(const CancelToken* group) : group_(group), fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

CancelToken::~CancelToken() {
  if (fd_ >= 0) ::close(fd_);
}

void CancelToken::request() noexcept {
  flag_.store(true, std::memory_order_relaxed);
  if (fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(fd_, &one, sizeof one);  // async-signal-safe; wakes every poll on fd_
  }
}

io::StopCheck CancelToken::stop_check() const {
  return {fd_, group_ != nullptr ? group_->fd_ : -1, [this] { return requested(); }};
}

void throw_if_cancelled(const CancelToken* token) {
  if (token != nullptr && token->requested()) {
    throw Error(ErrorCode::kInterrupted,
                "cancelled before finishing; what was staged has been removed and nothing was left at the output");
  }
}

}  // namespace vmsynth

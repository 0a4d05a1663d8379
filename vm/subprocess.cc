#include "vm/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <utility>

#include "common/error.h"

extern char** environ;

namespace vmsynth::vm {

using Clock = std::chrono::steady_clock;

std::string ProcessResult::describe() const {
  std::string s = term_signal != 0 ? "killed by signal " + std::to_string(term_signal)
                                   : "exit status " + std::to_string(exit_code);
  // The last non-empty stderr line is usually the reason (qemu, qemu-img).
  std::string_view e = err;
  while (!e.empty() && (e.back() == '\n' || e.back() == '\r')) e.remove_suffix(1);
  if (!e.empty()) {
    auto nl = e.rfind('\n');
    s += ": ";
    s += e.substr(nl == std::string_view::npos ? 0 : nl + 1);
  }
  return s;
}

std::optional<std::string> find_program(std::string_view name) {
  if (name.find('/') != std::string_view::npos) {
    std::string p(name);
    return ::access(p.c_str(), X_OK) == 0 ? std::optional(p) : std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    auto colon = dirs.find(':');
    std::string_view dir = dirs.substr(0, colon);
    std::string candidate(dir.empty() ? std::string_view(".") : dir);
    candidate += '/';
    candidate += name;
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return std::nullopt;
}

std::string shell_quote(std::string_view s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  q += '\'';
  return q;
}

namespace {

// Owns a posix_spawn_file_actions_t for the duration of one spawn.
class FileActions {
 public:
  FileActions() { ::posix_spawn_file_actions_init(&fa_); }
  ~FileActions() { ::posix_spawn_file_actions_destroy(&fa_); }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;
  posix_spawn_file_actions_t* get() { return &fa_; }

 private:
  posix_spawn_file_actions_t fa_;
};

std::array<io::File, 2> make_pipe(const std::string& what) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw io_error("cannot create a pipe for", what, errno);
  return {io::File(fds[0], what + " (pipe)"), io::File(fds[1], what + " (pipe)")};
}

}  // namespace

Subprocess Subprocess::spawn(const std::vector<std::string>& argv, bool capture) {
  if (argv.empty()) throw Error(ErrorCode::kUsage, "internal: empty argument vector");
  const std::string& prog = argv[0];
  if (!find_program(prog)) {
    throw Error(ErrorCode::kUnsupported,
                "'" + prog + "' is not installed or not in PATH (on Debian: apt-get install -y " +
                    (prog.rfind("qemu-img", 0) == 0 ? "qemu-utils" : "qemu-system-x86 qemu-utils") +
                    ")");
  }
  FileActions fa;
  ::posix_spawn_file_actions_addopen(fa.get(), 0, "/dev/null", O_RDONLY, 0);
  std::array<io::File, 2> out, err;
  if (capture) {
    out = make_pipe(prog);
    err = make_pipe(prog);
    // dup2 clears FD_CLOEXEC on the target; the originals close on exec.
    ::posix_spawn_file_actions_adddup2(fa.get(), out[1].fd(), 1);
    ::posix_spawn_file_actions_adddup2(fa.get(), err[1].fd(), 2);
  } else {
    ::posix_spawn_file_actions_addopen(fa.get(), 1, "/dev/null", O_WRONLY, 0);
    ::posix_spawn_file_actions_addopen(fa.get(), 2, "/dev/null", O_WRONLY, 0);
  }
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, prog.c_str(), fa.get(), nullptr, cargv.data(), environ);
  if (rc != 0) throw io_error("cannot start", prog, rc);
  Subprocess p;
  p.pid_ = pid;
  p.program_ = prog;
  if (capture) {
    p.out_ = std::move(out[0]);
    p.err_ = std::move(err[0]);
  }
  return p;
}

Subprocess::~Subprocess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    reap(0);
  }
}

Subprocess::Subprocess(Subprocess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      out_(std::move(o.out_)),
      err_(std::move(o.err_)),
      result_(std::move(o.result_)),
      program_(std::move(o.program_)) {}

Subprocess& Subprocess::operator=(Subprocess&& o) noexcept {
  if (this != &o) {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      reap(0);
    }
    pid_ = std::exchange(o.pid_, -1);
    out_ = std::move(o.out_);
    err_ = std::move(o.err_);
    result_ = std::move(o.result_);
    program_ = std::move(o.program_);
  }
  return *this;
}

void Subprocess::drain(int timeout_ms) {
  std::array<pollfd, 2> pfds{};
  std::array<io::File*, 2> files{&out_, &err_};
  std::array<std::string*, 2> sinks{&result_.out, &result_.err};
  nfds_t n = 0;
  std::array<int, 2> which{};
  for (int i = 0; i < 2; ++i) {
    if (files[i]->valid()) {
      pfds[n] = {files[i]->fd(), POLLIN, 0};
      which[n++] = i;
    }
  }
  if (n == 0) {
    if (timeout_ms > 0) ::poll(nullptr, 0, timeout_ms);
    return;
  }
  int rc = ::poll(pfds.data(), n, timeout_ms);
  if (rc <= 0) return;
  char buf[8192];
  for (nfds_t k = 0; k < n; ++k) {
    if (pfds[k].revents == 0) continue;
    int i = which[k];
    ssize_t got = ::read(files[i]->fd(), buf, sizeof buf);
    if (got > 0) {
      sinks[i]->append(buf, static_cast<size_t>(got));
    } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
      files[i]->close();
    }
  }
}

bool Subprocess::reap(int options) {
  if (pid_ <= 0) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, options);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  if (r == pid_) {
    if (WIFEXITED(status)) {
      result_.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      result_.term_signal = WTERMSIG(status);
    }
  }
  pid_ = -1;
  return true;
}

std::optional<ProcessResult> Subprocess::wait_for(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (reap(WNOHANG)) {
      // The child is gone; read what is left in the pipes (grandchildren such
      // as a daemonized QEMU may hold the write ends: do not wait for them).
      for (int i = 0; i < 64 && (out_.valid() || err_.valid()); ++i) {
        std::string before = result_.out + result_.err;
        drain(0);
        if (result_.out.size() + result_.err.size() == before.size()) break;
      }
      out_.close();
      err_.close();
      return result_;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    drain(static_cast<int>(std::min<long>(left.count(), 20)));
  }
}

ProcessResult Subprocess::terminate(int sig, std::chrono::milliseconds grace) {
  if (pid_ > 0) ::kill(pid_, sig);
  if (auto r = wait_for(grace)) return *r;
  if (pid_ > 0) ::kill(pid_, SIGKILL);
  reap(0);
  out_.close();
  err_.close();
  return result_;
}

ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  Subprocess p = Subprocess::spawn(argv, true);
  if (auto r = p.wait_for(timeout)) return *r;
  p.terminate(SIGKILL, std::chrono::milliseconds(1000));
  throw Error(ErrorCode::kIo, "'" + argv[0] + "' did not finish within " +
                                  std::to_string(timeout.count()) + " ms and was killed");
}

ProcessResult run_checked(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                          std::string_view what) {
  ProcessResult r = run_process(argv, timeout);
  if (!r.ok()) throw Error(ErrorCode::kIo, std::string(what) + " failed: " + r.describe());
  return r;
}

}  // namespace vmsynth::vm

// DNS-SD publishing and browsing through libavahi-client. See discovery.h.
#include "cloudlet/discovery.h"

#include <avahi-client/client.h>
#include <avahi-client/lookup.h>
#include <avahi-client/publish.h>
#include <avahi-common/alternative.h>
#include <avahi-common/domain.h>
#include <avahi-common/error.h>
#include <avahi-common/malloc.h>
#include <avahi-common/simple-watch.h>
#include <avahi-common/thread-watch.h>
#include <avahi-common/timeval.h>
#include <net/if.h>
#include <openssl/evp.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "common/hex.h"

namespace vmsynth::cloudlet {

namespace {

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

std::string lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// Checks one base id and returns it in lower case.
std::string normalized_id(const std::string& id) {
  if (id.size() != 32 || !std::all_of(id.begin(), id.end(), is_hex)) {
    throw Error(ErrorCode::kUsage, "base id '" + id + "' is not 32 hex digits");
  }
  return lower(id);
}

std::vector<std::string> normalized_ids(std::vector<std::string> ids) {
  for (auto& id : ids) id = normalized_id(id);
  return ids;
}

std::string joined(const std::vector<std::string>& ids) {
  std::string s;
  for (const auto& id : ids) {
    if (!s.empty()) s += ',';
    s += id;
  }
  return s;
}

std::vector<std::string> split_ids(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t comma = std::min(s.find(',', start), s.size());
    if (comma > start) out.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

// Frees an AvahiStringList when it goes out of scope.
struct StringListDeleter {
  void operator()(AvahiStringList* l) const { avahi_string_list_free(l); }
};
using StringList = std::unique_ptr<AvahiStringList, StringListDeleter>;

StringList txt_list(const std::vector<std::string>& entries) {
  AvahiStringList* l = nullptr;
  // avahi_string_list_add prepends: add in reverse to keep our order on the wire.
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) l = avahi_string_list_add(l, it->c_str());
  return StringList(l);
}

std::string take_avahi_string(char* s) {
  std::string out = s ? s : "";
  avahi_free(s);
  return out;
}

}  // namespace

std::string bases_digest(std::vector<std::string> base_ids) {
  base_ids = normalized_ids(std::move(base_ids));
  std::sort(base_ids.begin(), base_ids.end());
  const std::string text = joined(base_ids);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(text.data(), text.size(), md, &len, EVP_sha256(), nullptr) != 1) {
    throw Error(ErrorCode::kUnsupported, "SHA-256 is not available from libcrypto");
  }
  return to_hex(std::span<const uint8_t>(md, 8));
}

std::vector<std::string> txt_entries(bool tls, const std::vector<std::string>& base_ids) {
  std::vector<std::string> ids = normalized_ids(base_ids);
  std::vector<std::string> out = {"txtvers=1", "api=v1", tls ? "tls=1" : "tls=0"};
  std::string inline_list = "bases=" + joined(ids);
  if (inline_list.size() <= kMaxTxtEntry) {
    out.push_back(std::move(inline_list));
  } else {
    out.push_back("bases_digest=" + bases_digest(ids));
    out.push_back("nbases=" + std::to_string(ids.size()));
  }
  return out;
}

std::string cloudlet_url(const std::string& address, std::uint16_t port, bool tls) {
  std::string host = address;
  if (address.find(':') != std::string::npos) {
    const std::size_t pct = address.find('%');
    host = "[" + (pct == std::string::npos ? address : address.substr(0, pct) + "%25" + address.substr(pct + 1)) + "]";
  }
  return std::string(tls ? "https://" : "http://") + host + ":" + std::to_string(port);
}

// ---------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------

// The members above the mutex are touched only on the poll thread, with the
// poll lock held (avahi_threaded_poll_lock), or before the thread starts and
// after it stopped. The mutex guards the members below it, which any thread reads.
struct Publisher::Impl {
  AvahiThreadedPoll* poll = nullptr;
  AvahiClient* client = nullptr;
  AvahiEntryGroup* group = nullptr;
  AvahiTimeout* retry = nullptr;
  std::string current_name;  // the name being registered (alternatives replace it)
  std::uint16_t port = 0;
  bool tls = false;
  std::vector<std::string> txt;
  std::function<void(const std::string&)> notice;
  std::chrono::milliseconds retry_interval{};
  bool said_waiting = false;  // one "not running" notice per absence, not one per retry

  mutable std::mutex mutex;
  mutable std::condition_variable changed;
  State state = State::kWaitingForDaemon;
  std::string registered_name;

  void set_state(State s, const std::string& established_name = {}) {
    {
      std::lock_guard lock(mutex);
      state = s;
      if (s == State::kEstablished) registered_name = established_name;
    }
    changed.notify_all();
  }

  void say(const std::string& text) {
    if (notice) notice(text);
  }

  void connect() {
    int err = 0;
    // The callback may run inside avahi_client_new (state RUNNING) before it
    // returns: it stores the client pointer itself.
    AvahiClient* c =
        avahi_client_new(avahi_threaded_poll_get(poll), AVAHI_CLIENT_NO_FAIL, &Impl::on_client, this, &err);
    if (c == nullptr) {
      // Not even the system bus is there (AVAHI_CLIENT_NO_FAIL covers only avahi-daemon).
      set_state(State::kWaitingForDaemon);
      if (!said_waiting) {
        said_waiting = true;
        say("cannot reach avahi-daemon over the D-Bus system bus (" + std::string(avahi_strerror(err)) +
            "): is avahi-daemon running? '" + current_name + "' is not advertised; retrying every " +
            std::to_string(retry_interval.count()) + " ms");
      }
      arm_retry();
      return;
    }
    client = c;
  }

  void arm_retry() {
    const AvahiPoll* api = avahi_threaded_poll_get(poll);
    struct timeval tv;
    avahi_elapse_time(&tv, static_cast<unsigned>(retry_interval.count()), 0);
    if (retry == nullptr) {
      retry = api->timeout_new(api, &tv, &Impl::on_retry, this);
    } else {
      api->timeout_update(retry, &tv);
    }
  }

  // The timer's one action: connect when there is no client, else register again.
  static void on_retry(AvahiTimeout* t, void* self) {
    auto* impl = static_cast<Impl*>(self);
    avahi_threaded_poll_get(impl->poll)->timeout_update(t, nullptr);
    if (impl->client == nullptr) {
      impl->connect();
    } else if (avahi_client_get_state(impl->client) == AVAHI_CLIENT_S_RUNNING) {
      impl->register_service();
    }
  }

  static void on_client(AvahiClient* c, AvahiClientState s, void* self) {
    auto* impl = static_cast<Impl*>(self);
    impl->client = c;
    switch (s) {
      case AVAHI_CLIENT_S_RUNNING:
        if (impl->said_waiting) impl->say("avahi-daemon is reachable; registering '" + impl->current_name + "'");
        impl->said_waiting = false;
        impl->register_service();
        break;
      case AVAHI_CLIENT_S_COLLISION:
      case AVAHI_CLIENT_S_REGISTERING:
        // The host name is being (re)probed: withdraw until the client runs again.
        if (impl->group) avahi_entry_group_reset(impl->group);
        impl->set_state(State::kRegistering);
        break;
      case AVAHI_CLIENT_CONNECTING:
        impl->set_state(State::kWaitingForDaemon);
        if (!impl->said_waiting) {
          impl->said_waiting = true;
          impl->say("avahi-daemon is not running: '" + impl->current_name +
                    "' is not advertised; it will be as soon as avahi-daemon starts");
        }
        break;
      case AVAHI_CLIENT_FAILURE: {
        const int err = avahi_client_errno(c);
        // Freeing the client frees its entry group too.
        avahi_client_free(c);
        impl->client = nullptr;
        impl->group = nullptr;
        impl->set_state(State::kWaitingForDaemon);
        impl->said_waiting = true;
        if (err == AVAHI_ERR_DISCONNECTED) {
          impl->say("lost avahi-daemon (" + std::string(avahi_strerror(err)) + "); '" + impl->current_name +
                    "' will be registered again when it comes back");
          impl->connect();  // AVAHI_CLIENT_NO_FAIL: waits for the daemon to reappear
        } else {
          impl->say("avahi client failed (" + std::string(avahi_strerror(err)) + "); retrying in " +
                    std::to_string(impl->retry_interval.count()) + " ms");
          impl->arm_retry();
        }
        break;
      }
    }
  }

  static void on_group(AvahiEntryGroup* g, AvahiEntryGroupState s, void* self) {
    auto* impl = static_cast<Impl*>(self);
    impl->group = g;
    switch (s) {
      case AVAHI_ENTRY_GROUP_ESTABLISHED:
        impl->set_state(State::kEstablished, impl->current_name);
        break;
      case AVAHI_ENTRY_GROUP_COLLISION: {
        // Someone on the network has the name: take the next alternative.
        const std::string old = impl->current_name;
        impl->current_name = take_avahi_string(avahi_alternative_service_name(old.c_str()));
        impl->say("service name '" + old + "' is taken on the network; registering as '" + impl->current_name + "'");
        avahi_entry_group_reset(g);
        impl->register_service();
        break;
      }
      case AVAHI_ENTRY_GROUP_FAILURE:
        impl->say("registering '" + impl->current_name + "' failed (" +
                  avahi_strerror(avahi_client_errno(avahi_entry_group_get_client(g))) + "); retrying in " +
                  std::to_string(impl->retry_interval.count()) + " ms");
        avahi_entry_group_reset(g);
        impl->set_state(State::kRegistering);
        impl->arm_retry();
        break;
      case AVAHI_ENTRY_GROUP_UNCOMMITED:
      case AVAHI_ENTRY_GROUP_REGISTERING:
        break;
    }
  }

  // Adds the service to the (empty) entry group and commits it; a name that
  // a local service already holds is replaced by its alternative at once.
  void register_service() {
    if (client == nullptr) return;
    if (group == nullptr) {
      group = avahi_entry_group_new(client, &Impl::on_group, this);
      if (group == nullptr) {
        say("cannot create an avahi entry group (" + std::string(avahi_strerror(avahi_client_errno(client))) + ")");
        arm_retry();
        return;
      }
    }
    if (!avahi_entry_group_is_empty(group)) return;
    set_state(State::kRegistering);
    StringList list = txt_list(txt);
    for (;;) {
      int rc = avahi_entry_group_add_service_strlst(group, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC,
                                                    static_cast<AvahiPublishFlags>(0), current_name.c_str(),
                                                    kServiceType, nullptr, nullptr, port, list.get());
      if (rc == AVAHI_ERR_COLLISION) {
        const std::string old = current_name;
        current_name = take_avahi_string(avahi_alternative_service_name(old.c_str()));
        say("service name '" + old + "' is taken on this host; registering as '" + current_name + "'");
        avahi_entry_group_reset(group);
        continue;
      }
      if (rc < 0 || (rc = avahi_entry_group_commit(group)) < 0) {
        say("registering '" + current_name + "' failed (" + avahi_strerror(rc) + "); retrying in " +
            std::to_string(retry_interval.count()) + " ms");
        avahi_entry_group_reset(group);
        arm_retry();
      }
      return;
    }
  }

  void publish_txt() {
    if (client == nullptr || group == nullptr || avahi_entry_group_is_empty(group))
      return;  // next registration uses it
    StringList list = txt_list(txt);
    if (avahi_entry_group_update_service_txt_strlst(group, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC,
                                                    static_cast<AvahiPublishFlags>(0), current_name.c_str(),
                                                    kServiceType, nullptr, list.get()) < 0) {
      // Register afresh with the new TXT.
      avahi_entry_group_reset(group);
      register_service();
    }
  }
};

Publisher::Publisher(Options options) : impl_(std::make_unique<Impl>()) {
  if (options.name.empty() || !avahi_is_valid_service_name(options.name.c_str())) {
    throw Error(ErrorCode::kUsage, "service name '" + options.name + "' is not 1 to 63 bytes of UTF-8");
  }
  if (options.port == 0) throw Error(ErrorCode::kUsage, "port 0 cannot be published");
  impl_->current_name = options.name;
  impl_->port = options.port;
  impl_->tls = options.tls;
  impl_->txt = txt_entries(options.tls, options.base_ids);
  impl_->notice = std::move(options.notice);
  impl_->retry_interval = std::max(options.retry_interval, std::chrono::milliseconds(10));
  impl_->poll = avahi_threaded_poll_new();
  if (impl_->poll == nullptr) throw Error(ErrorCode::kIo, "cannot create the avahi poll loop");
  impl_->connect();
  if (avahi_threaded_poll_start(impl_->poll) < 0) {
    if (impl_->client) avahi_client_free(impl_->client);
    if (impl_->retry) avahi_threaded_poll_get(impl_->poll)->timeout_free(impl_->retry);
    avahi_threaded_poll_free(impl_->poll);
    throw Error(ErrorCode::kIo, "cannot start the avahi poll thread");
  }
}

Publisher::~Publisher() {
  avahi_threaded_poll_stop(impl_->poll);
  // Freeing the client frees the entry group, which withdraws the service.
  if (impl_->client) avahi_client_free(impl_->client);
  if (impl_->retry) avahi_threaded_poll_get(impl_->poll)->timeout_free(impl_->retry);
  avahi_threaded_poll_free(impl_->poll);
}

void Publisher::update_bases(std::vector<std::string> base_ids) {
  std::vector<std::string> txt = txt_entries(impl_->tls, base_ids);
  avahi_threaded_poll_lock(impl_->poll);
  impl_->txt = std::move(txt);
  impl_->publish_txt();
  avahi_threaded_poll_unlock(impl_->poll);
}

Publisher::State Publisher::state() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->state;
}

std::string Publisher::name() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->registered_name;
}

bool Publisher::wait_established(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mutex);
  return impl_->changed.wait_for(lock, timeout, [&] { return impl_->state == State::kEstablished; });
}

// ---------------------------------------------------------------------------
// browse
// ---------------------------------------------------------------------------

namespace {

struct SimplePollDeleter {
  void operator()(AvahiSimplePoll* p) const { avahi_simple_poll_free(p); }
};
struct ClientDeleter {
  void operator()(AvahiClient* c) const { avahi_client_free(c); }
};
struct BrowserDeleter {
  void operator()(AvahiServiceBrowser* b) const { avahi_service_browser_free(b); }
};

// One browse() run: runs on the calling thread inside avahi_simple_poll_loop.
struct BrowseRun {
  AvahiSimplePoll* poll = nullptr;
  AvahiClient* client = nullptr;
  std::vector<Cloudlet> found;
  std::vector<AvahiServiceResolver*> pending;  // freed by avahi_client_free if still running
  std::string failure;                         // set: stop and throw kIo

  void fail(std::string what) {
    if (failure.empty()) failure = std::move(what);
    avahi_simple_poll_quit(poll);
  }

  static void on_client(AvahiClient* c, AvahiClientState s, void* self) {
    auto* run = static_cast<BrowseRun*>(self);
    if (s == AVAHI_CLIENT_FAILURE) {
      run->fail("avahi-daemon failed while browsing (" + std::string(avahi_strerror(avahi_client_errno(c))) + ")");
    }
  }

  static void on_browse(AvahiServiceBrowser* b, AvahiIfIndex interface, AvahiProtocol protocol, AvahiBrowserEvent event,
                        const char* name, const char* type, const char* domain, AvahiLookupResultFlags, void* self) {
    auto* run = static_cast<BrowseRun*>(self);
    switch (event) {
      case AVAHI_BROWSER_NEW: {
        AvahiServiceResolver* r =
            avahi_service_resolver_new(avahi_service_browser_get_client(b), interface, protocol, name, type, domain,
                                       AVAHI_PROTO_UNSPEC, static_cast<AvahiLookupFlags>(0), &on_resolve, run);
        if (r) run->pending.push_back(r);
        break;
      }
      case AVAHI_BROWSER_FAILURE:
        run->fail("browsing " + std::string(kServiceType) + " failed (" +
                  avahi_strerror(avahi_client_errno(avahi_service_browser_get_client(b))) + ")");
        break;
      case AVAHI_BROWSER_REMOVE:
      case AVAHI_BROWSER_CACHE_EXHAUSTED:
      case AVAHI_BROWSER_ALL_FOR_NOW:
        break;
    }
  }

  static void on_resolve(AvahiServiceResolver* r, AvahiIfIndex interface, AvahiProtocol, AvahiResolverEvent event,
                         const char* name, const char*, const char*, const char* host, const AvahiAddress* a,
                         uint16_t port, AvahiStringList* txt, AvahiLookupResultFlags, void* self) {
    auto* run = static_cast<BrowseRun*>(self);
    if (event == AVAHI_RESOLVER_FOUND) run->found.push_back(cloudlet_of(interface, name, host, a, port, txt));
    run->pending.erase(std::remove(run->pending.begin(), run->pending.end(), r), run->pending.end());
    avahi_service_resolver_free(r);
  }

  static Cloudlet cloudlet_of(AvahiIfIndex interface, const char* name, const char* host, const AvahiAddress* a,
                              uint16_t port, AvahiStringList* txt) {
    Cloudlet c;
    c.name = name ? name : "";
    c.host = host ? host : "";
    char addr[AVAHI_ADDRESS_STR_MAX] = "";
    if (a) avahi_address_snprint(addr, sizeof addr, a);
    c.address = addr;
    // A link-local IPv6 address means nothing without its interface.
    if (a && a->proto == AVAHI_PROTO_INET6 && c.address.rfind("fe80:", 0) == 0 && interface >= 0) {
      char ifname[IF_NAMESIZE] = "";
      if (if_indextoname(static_cast<unsigned>(interface), ifname)) c.address += std::string("%") + ifname;
    }
    c.port = port;
    bool have_nbases = false;
    for (AvahiStringList* l = txt; l; l = avahi_string_list_get_next(l)) {
      char* key = nullptr;
      char* value = nullptr;
      if (avahi_string_list_get_pair(l, &key, &value, nullptr) < 0) continue;
      const std::string k = take_avahi_string(key);
      const std::string v = take_avahi_string(value);
      if (k == "txtvers") {
        c.txtvers = v;
      } else if (k == "api") {
        c.api = v;
      } else if (k == "tls") {
        c.tls = v == "1";
      } else if (k == "bases") {
        c.base_ids = split_ids(v);
      } else if (k == "bases_digest") {
        c.bases_digest = v;
      } else if (k == "nbases") {
        try {
          c.nbases = std::stoul(v);
          have_nbases = true;
        } catch (const std::exception&) {
          // A malformed count is the publisher's bug; the list from /v1/bases still tells.
        }
      }
    }
    if (!have_nbases) c.nbases = c.base_ids.size();
    c.url = cloudlet_url(c.address, c.port, c.tls);
    return c;
  }
};

bool is_ipv4(const Cloudlet& c) { return c.address.find(':') == std::string::npos; }

}  // namespace

std::vector<Cloudlet> browse(std::chrono::milliseconds timeout) {
  std::unique_ptr<AvahiSimplePoll, SimplePollDeleter> poll(avahi_simple_poll_new());
  if (!poll) throw Error(ErrorCode::kIo, "cannot create the avahi poll loop");
  BrowseRun run;
  run.poll = poll.get();
  int err = 0;
  std::unique_ptr<AvahiClient, ClientDeleter> client(avahi_client_new(
      avahi_simple_poll_get(poll.get()), static_cast<AvahiClientFlags>(0), &BrowseRun::on_client, &run, &err));
  if (!client) {
    throw Error(ErrorCode::kUnsupported, "cannot reach avahi-daemon to browse for cloudlets (" +
                                             std::string(avahi_strerror(err)) +
                                             "): is avahi-daemon running? (Debian: apt-get install avahi-daemon)");
  }
  run.client = client.get();
  std::unique_ptr<AvahiServiceBrowser, BrowserDeleter> browser(
      avahi_service_browser_new(client.get(), AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC, kServiceType, nullptr,
                                static_cast<AvahiLookupFlags>(0), &BrowseRun::on_browse, &run));
  if (!browser) {
    throw Error(ErrorCode::kIo, "cannot browse for " + std::string(kServiceType) + " (" +
                                    avahi_strerror(avahi_client_errno(client.get())) + ")");
  }
  const AvahiPoll* api = avahi_simple_poll_get(poll.get());
  struct timeval deadline;
  avahi_elapse_time(&deadline, static_cast<unsigned>(std::max<std::chrono::milliseconds::rep>(timeout.count(), 0)), 0);
  AvahiTimeout* stop = api->timeout_new(
      api, &deadline, [](AvahiTimeout*, void* p) { avahi_simple_poll_quit(static_cast<AvahiSimplePoll*>(p)); },
      poll.get());
  avahi_simple_poll_loop(poll.get());
  api->timeout_free(stop);
  for (AvahiServiceResolver* r : run.pending) avahi_service_resolver_free(r);
  browser.reset();
  client.reset();
  if (!run.failure.empty()) throw Error(ErrorCode::kIo, run.failure);

  // One entry per name: the same service answers on every interface and protocol.
  std::vector<Cloudlet> out;
  for (auto& c : run.found) {
    auto same = std::find_if(out.begin(), out.end(), [&](const Cloudlet& o) { return o.name == c.name; });
    if (same == out.end()) {
      out.push_back(std::move(c));
    } else if (!is_ipv4(*same) && is_ipv4(c)) {
      *same = std::move(c);
    }
  }
  std::sort(out.begin(), out.end(), [](const Cloudlet& a, const Cloudlet& b) { return a.name < b.name; });
  return out;
}

const Cloudlet* pick_cloudlet(const std::vector<Cloudlet>& cloudlets, const std::string& base_id) {
  const std::string want = lower(base_id);
  const Cloudlet* best = nullptr;
  for (const auto& c : cloudlets) {
    const bool holds =
        std::any_of(c.base_ids.begin(), c.base_ids.end(), [&](const std::string& id) { return lower(id) == want; });
    if (!holds) continue;
    // Better: TLS over plain, then the smaller (name, url).
    if (best == nullptr || (c.tls && !best->tls) ||
        (c.tls == best->tls && std::tie(c.name, c.url) < std::tie(best->name, best->url))) {
      best = &c;
    }
  }
  return best;
}

}  // namespace vmsynth::cloudlet

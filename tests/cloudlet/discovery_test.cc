// DNS-SD discovery for real: a private dbus-daemon and avahi-daemon
// (mdns_sandbox.h), Publishers in this process, and the `vmsynth discover`
// binary (VMSYNTH_BIN) as a client; avahi-browse cross-checks the raw TXT.
// Plus the pure pieces: TXT entries, the digest, URLs, pick_cloudlet.
#include "cloudlet/discovery.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "cloudlet/mdns_sandbox.h"
#include "common/error.h"
#include "testutil/run_command.h"

namespace vmsynth::cloudlet {
namespace {

using std::chrono::milliseconds;
using testutil::MdnsSandbox;
using testutil::run_command;

// n distinct base ids, 32 hex digits each.
std::vector<std::string> ids(int n, char tag = 'a') {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    char buf[33];
    std::snprintf(buf, sizeof buf, "%c%031x", tag, i + 1);
    out.push_back(buf);
  }
  return out;
}

// Collects a Publisher's notices (they arrive on its thread).
struct Notices {
  std::mutex m;
  std::vector<std::string> lines;
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& s) {
      std::lock_guard lock(m);
      lines.push_back(s);
    };
  }
  bool any(const std::string& part) {
    std::lock_guard lock(m);
    return std::any_of(lines.begin(), lines.end(), [&](const auto& l) { return l.find(part) != std::string::npos; });
  }
  std::string all() {
    std::lock_guard lock(m);
    std::string s;
    for (const auto& l : lines) s += l + "\n";
    return s;
  }
};

Publisher::Options options(const std::string& name, std::uint16_t port, std::vector<std::string> base_ids,
                           Notices* notices = nullptr) {
  Publisher::Options o;
  o.name = name;
  o.port = port;
  o.base_ids = std::move(base_ids);
  if (notices) o.notice = notices->sink();
  o.retry_interval = milliseconds(200);
  return o;
}

// `vmsynth discover ARGS`, bounded by timeout(1).
testutil::CommandResult discover(const std::string& args) {
  return run_command("timeout 60 '" VMSYNTH_BIN "' discover " + args);
}

// The document of `vmsynth discover --json ARGS`; {} (and a failure) if it fails.
nlohmann::json discover_json(const std::string& args = "--timeout 3") {
  // run_command adds 2>&1 after the command: the parentheses keep stderr out of the document.
  auto r = run_command("(timeout 60 '" VMSYNTH_BIN "' discover --json " + args + " 2>/dev/null)");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json doc = nlohmann::json::parse(r.output, nullptr, false);
  EXPECT_FALSE(doc.is_discarded()) << r.output;
  return doc.is_discarded() ? nlohmann::json::object() : doc;
}

const nlohmann::json* find_named(const nlohmann::json& doc, const std::string& name) {
  if (!doc.contains("cloudlets")) return nullptr;
  for (const auto& c : doc["cloudlets"]) {
    if (c["name"] == name) return &c;
  }
  return nullptr;
}

class DiscoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!MdnsSandbox::can_run()) GTEST_SKIP() << "needs root for the network and mount namespaces of avahi-daemon";
    ASSERT_TRUE(sandbox_.start()) << sandbox_.why();
  }
  MdnsSandbox sandbox_;
};

TEST_F(DiscoveryTest, PublishedServiceIsFoundByDiscoverWithItsTxt) {
  const auto bases = ids(3);
  Notices notices;
  Publisher p(options("rack-1", 8080, bases, &notices));
  ASSERT_TRUE(p.wait_established(milliseconds(10000))) << notices.all() << sandbox_.avahi_log();
  EXPECT_EQ(p.name(), "rack-1");
  EXPECT_EQ(p.state(), Publisher::State::kEstablished);

  const nlohmann::json doc = discover_json();
  EXPECT_EQ(doc["ok"], true);
  const nlohmann::json* c = find_named(doc, "rack-1");
  ASSERT_NE(c, nullptr) << doc.dump(2);
  EXPECT_EQ((*c)["url"], "http://127.0.0.1:8080");
  EXPECT_EQ((*c)["host"], "vmsynth-test.local");
  EXPECT_EQ((*c)["port"], 8080);
  EXPECT_EQ((*c)["tls"], false);
  EXPECT_EQ((*c)["api"], "v1");
  EXPECT_EQ((*c)["base_ids"].get<std::vector<std::string>>(), bases);
  EXPECT_FALSE(c->contains("bases_digest"));

  // The raw TXT as any DNS-SD client sees it.
  auto raw = run_command("timeout 20 avahi-browse --resolve --terminate --parsable _vmsynth._tcp");
  EXPECT_NE(raw.output.find("\"txtvers=1\""), std::string::npos) << raw.output;
  EXPECT_NE(raw.output.find("\"api=v1\""), std::string::npos) << raw.output;
  EXPECT_NE(raw.output.find("\"tls=0\""), std::string::npos) << raw.output;
  EXPECT_NE(raw.output.find("\"bases=" + bases[0] + "," + bases[1] + "," + bases[2] + "\""), std::string::npos)
      << raw.output;

  // And the human table.
  auto table = discover("--timeout 2");
  EXPECT_EQ(table.exit_code, 0) << table.output;
  EXPECT_NE(table.output.find("rack-1"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find(bases[2]), std::string::npos) << table.output;
  EXPECT_FALSE(notices.any("not running")) << notices.all();
}

// The daemon itself: vmsynthd --mdns publishes its port, TLS flag and the
// base it holds; `vmsynth push --discover` finds it by the overlay's base id
// and synthesizes there; SIGTERM withdraws the service.
TEST_F(DiscoveryTest, VmsynthdPublishesItselfAndPushDiscoverFindsIt) {
  const std::string t = sandbox_.dir().sub("daemon");
  const std::string cli = "'" VMSYNTH_BIN "'";
  ASSERT_EQ(run_command("mkdir -p '" + t + "/bases' && " + cli + " gen-pair --out '" + t +
                        "/pair' --memory-mib 4 --disk-mib 8 -q && " + cli + " overlay create --base '" + t +
                        "/pair/base' --launch '" + t + "/pair/launch' -o '" + t + "/app.vmo' -q && ln -s '" + t +
                        "/pair/base' '" + t + "/bases/b1'")
                .exit_code,
            0);
  const auto info = nlohmann::json::parse(run_command("(" + cli + " overlay info --json '" + t + "/app.vmo')").output,
                                          nullptr, false);
  ASSERT_TRUE(info.is_object() && info.contains("base_id")) << info.dump();
  const std::string base_id = info["base_id"];

  testutil::Daemon d(
      {VMSYNTHD_BIN, "--listen", "127.0.0.1:0", "--bases", t + "/bases", "--state", t + "/state", "--mdns"},
      t + "/vmsynthd.log");
  ASSERT_TRUE(d.wait_for_log("listening on http://", milliseconds(30000))) << d.log();
  const std::string log = d.log();
  const size_t at = log.find("http://");
  const std::string url = log.substr(at, log.find('\n', at) - at);

  // The cloudlet of `doc` whose URL is the daemon's, or null.
  auto daemon_in = [&](const nlohmann::json& doc) -> nlohmann::json {
    if (doc.contains("cloudlets")) {
      for (const auto& c : doc["cloudlets"]) {
        if (c.value("url", "") == url) return c;
      }
    }
    return nullptr;
  };
  nlohmann::json doc, mine;
  for (int attempt = 0; attempt < 5 && mine.is_null(); ++attempt) {  // registration takes a moment
    doc = discover_json("--timeout 2");
    mine = daemon_in(doc);
  }
  ASSERT_FALSE(mine.is_null()) << "vmsynthd at " << url << " not discovered: " << doc.dump(2) << d.log();
  EXPECT_EQ(mine["tls"], false);
  EXPECT_EQ(mine["api"], "v1");
  EXPECT_EQ(mine["base_ids"], nlohmann::json::array({base_id})) << mine.dump();
  EXPECT_EQ(mine["name"].get<std::string>().rfind("vmsynthd on ", 0), 0u) << mine.dump();

  auto pushed = run_command("(timeout 60 " + cli + " push --discover --json -q '" + t + "/app.vmo' 2>/dev/null)");
  ASSERT_EQ(pushed.exit_code, 0) << pushed.output << d.log();
  const auto result = nlohmann::json::parse(pushed.output, nullptr, false);
  EXPECT_EQ(result.value("url", ""), url) << pushed.output;
  EXPECT_EQ(result.value("state", ""), "synthesized") << pushed.output;
  EXPECT_EQ(result.value("base_id", ""), base_id) << pushed.output;

  // A base no cloudlet holds: nothing is pushed, exit 4 (wrong base).
  auto none = run_command("timeout 60 " + cli + " push --discover --discover-timeout 2 --base-id " +
                          std::string(32, 'f') + " '" + t + "/app.vmo'");
  EXPECT_EQ(none.exit_code, 4) << none.output;
  EXPECT_NE(none.output.find("holds base VM"), std::string::npos) << none.output;

  d.stop();  // SIGTERM: the service is withdrawn before the daemon exits
  nlohmann::json after = discover_json("--timeout 1");
  for (int attempt = 0; attempt < 5 && !daemon_in(after).is_null(); ++attempt) {  // caches drop it after the goodbye
    after = discover_json("--timeout 1");
  }
  EXPECT_TRUE(daemon_in(after).is_null()) << "a stopped vmsynthd is still advertised: " << after.dump(2);
  EXPECT_NE(d.log().find("stopped"), std::string::npos) << d.log();
}

TEST_F(DiscoveryTest, SameNameGetsAnAlternativeAndBothAreBrowsed) {
  Notices n1, n2;
  Publisher first(options("rack-dup", 8081, ids(1, 'b'), &n1));
  ASSERT_TRUE(first.wait_established(milliseconds(10000))) << n1.all();
  Publisher second(options("rack-dup", 8082, ids(2, 'c'), &n2));
  ASSERT_TRUE(second.wait_established(milliseconds(10000))) << n2.all();
  EXPECT_EQ(first.name(), "rack-dup");
  EXPECT_NE(second.name(), "rack-dup");
  EXPECT_EQ(second.name().rfind("rack-dup", 0), 0u) << second.name();
  EXPECT_TRUE(n2.any("is taken")) << n2.all();

  const std::vector<Cloudlet> seen = browse(milliseconds(3000));
  auto by_name = [&](const std::string& name) -> const Cloudlet* {
    for (const auto& c : seen) {
      if (c.name == name) return &c;
    }
    return nullptr;
  };
  const Cloudlet* a = by_name(first.name());
  const Cloudlet* b = by_name(second.name());
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->port, 8081);
  EXPECT_EQ(b->port, 8082);
  EXPECT_EQ(a->base_ids, ids(1, 'b'));
  EXPECT_EQ(b->base_ids, ids(2, 'c'));
  EXPECT_EQ(a->txtvers, "1");
  EXPECT_EQ(pick_cloudlet(seen, ids(2, 'c')[1]), b);

  const nlohmann::json doc = discover_json();
  EXPECT_NE(find_named(doc, first.name()), nullptr) << doc.dump(2);
  EXPECT_NE(find_named(doc, second.name()), nullptr) << doc.dump(2);
}

// Two avahi-daemons on one link: the second host's Publisher loses the probe
// for the name (AVAHI_ENTRY_GROUP_COLLISION) and takes the alternative.
TEST(DiscoveryLinkTest, NameTakenOnTheNetworkGetsAnAlternativeAndBothAreBrowsed) {
  if (!MdnsSandbox::can_run()) GTEST_SKIP() << "needs root for the network and mount namespaces of avahi-daemon";
  testutil::MdnsLink link;
  ASSERT_TRUE(link.start()) << link.why();
  Notices notices;
  Publisher a(options("rack-net", 8090, ids(1, 'a'), &notices));
  ASSERT_TRUE(a.wait_established(milliseconds(10000))) << notices.all() << link.logs();

  testutil::Daemon b({"env", "DBUS_SYSTEM_BUS_ADDRESS=" + link.bus_b_address(), PUBLISH_HELPER, "rack-net", "8091",
                      ids(2, 'b')[0], ids(2, 'b')[1]},
                     link.dir().sub("helper.log"));
  ASSERT_TRUE(b.wait_for_log("established ", milliseconds(20000))) << b.log() << link.logs();
  EXPECT_NE(b.log().find("established rack-net #2"), std::string::npos) << b.log();
  EXPECT_NE(b.log().find("is taken on the network"), std::string::npos) << b.log();
  EXPECT_EQ(a.name(), "rack-net");

  const nlohmann::json doc = discover_json();
  const nlohmann::json* first = find_named(doc, "rack-net");
  const nlohmann::json* second = find_named(doc, "rack-net #2");
  ASSERT_NE(first, nullptr) << doc.dump(2);
  ASSERT_NE(second, nullptr) << doc.dump(2);
  EXPECT_EQ((*first)["url"], "http://10.77.0.1:8090");
  EXPECT_EQ((*second)["url"], "http://10.77.0.2:8091");
  EXPECT_EQ((*second)["host"], "vmsynth-b.local");
  EXPECT_EQ((*second)["base_ids"].get<std::vector<std::string>>(), ids(2, 'b'));
}

TEST_F(DiscoveryTest, ManyBasesPublishADigestAndDiscoverReadsV1Bases) {
  const auto bases = ids(40);
  // The cloudlet's API, as far as discover needs it: GET /v1/bases behind a bearer token.
  httplib::Server api;
  std::atomic<int> requests{0};
  api.Get("/v1/bases", [&](const httplib::Request& req, httplib::Response& res) {
    ++requests;
    if (req.get_header_value("Authorization") != "Bearer s3cret") {
      res.status = 401;
      return;
    }
    nlohmann::json list = nlohmann::json::array();
    for (const auto& id : bases) {
      list.push_back({{"id", id}, {"name", "base " + id.substr(0, 4)}, {"memory_bytes", 1}, {"disk_bytes", 2}});
    }
    res.set_content(list.dump(), "application/json");
  });
  const int port = api.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  struct Serving {  // stops and joins the server on every way out of the test
    httplib::Server& api;
    std::thread thread;
    ~Serving() {
      api.stop();
      thread.join();
    }
  } serving{api, std::thread([&] { api.listen_after_bind(); })};

  Publisher p(options("rack-big", static_cast<std::uint16_t>(port), bases));
  Publisher unreachable(options("rack-gone", 9, bases));  // nothing listens on port 9 (discard)
  const bool up = p.wait_established(milliseconds(10000)) && unreachable.wait_established(milliseconds(10000));

  const std::vector<Cloudlet> seen = browse(milliseconds(3000));
  std::string raw;
  if (up) raw = run_command("timeout 20 avahi-browse --resolve --terminate --parsable _vmsynth._tcp").output;
  std::ofstream(sandbox_.dir().sub("tokens")) << "# name token\n\nlaptop s3cret\nother nope\n";
  const nlohmann::json doc = discover_json("--timeout 3 --token-file '" + sandbox_.dir().sub("tokens") + "'");
  ASSERT_TRUE(up) << sandbox_.avahi_log();

  const auto big = std::find_if(seen.begin(), seen.end(), [](const Cloudlet& c) { return c.name == "rack-big"; });
  ASSERT_NE(big, seen.end());
  EXPECT_TRUE(big->base_ids.empty());
  EXPECT_EQ(big->bases_digest, bases_digest(bases));
  EXPECT_EQ(big->nbases, 40u);
  EXPECT_NE(raw.find("\"bases_digest=" + bases_digest(bases) + "\""), std::string::npos) << raw;
  EXPECT_NE(raw.find("\"nbases=40\""), std::string::npos) << raw;
  EXPECT_EQ(raw.find("\"bases="), std::string::npos) << raw;

  const nlohmann::json* c = find_named(doc, "rack-big");
  ASSERT_NE(c, nullptr) << doc.dump(2);
  EXPECT_EQ((*c)["bases_digest"], bases_digest(bases));
  EXPECT_EQ((*c)["nbases"], 40);
  EXPECT_EQ((*c)["base_ids"].get<std::vector<std::string>>(), bases) << doc.dump(2);
  EXPECT_FALSE(c->contains("bases_error")) << doc.dump(2);
  EXPECT_GE(requests.load(), 1);
  // A cloudlet whose API does not answer is listed, with the reason, and discover still succeeds.
  const nlohmann::json* gone = find_named(doc, "rack-gone");
  ASSERT_NE(gone, nullptr) << doc.dump(2);
  EXPECT_TRUE((*gone)["base_ids"].empty());
  EXPECT_NE((*gone)["bases_error"].get<std::string>().find("/v1/bases"), std::string::npos) << doc.dump(2);
}

TEST_F(DiscoveryTest, TlsCloudletIsReadOverHttpsWithTheGivenCa) {
  const std::string cert = sandbox_.dir().sub("cert.pem"), key = sandbox_.dir().sub("key.pem");
  auto made = run_command(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
      "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout '" +
      key + "' -out '" + cert + "'");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const auto bases = ids(9);
  httplib::SSLServer api(cert.c_str(), key.c_str());
  ASSERT_TRUE(api.is_valid());
  api.Get("/v1/bases", [&](const httplib::Request&, httplib::Response& res) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& id : bases) list.push_back({{"id", id}, {"name", "b"}, {"memory_bytes", 1}, {"disk_bytes", 2}});
    res.set_content(list.dump(), "application/json");
  });
  const int port = api.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  struct Serving {
    httplib::Server& api;
    std::thread thread;
    ~Serving() {
      api.stop();
      thread.join();
    }
  } serving{api, std::thread([&] { api.listen_after_bind(); })};

  Publisher::Options o = options("rack-tls", static_cast<std::uint16_t>(port), bases);
  o.tls = true;
  Publisher p(std::move(o));
  ASSERT_TRUE(p.wait_established(milliseconds(10000)));

  const nlohmann::json doc = discover_json("--timeout 3 --cacert '" + cert + "'");
  const nlohmann::json* c = find_named(doc, "rack-tls");
  ASSERT_NE(c, nullptr) << doc.dump(2);
  EXPECT_EQ((*c)["tls"], true);
  EXPECT_EQ((*c)["url"], "https://127.0.0.1:" + std::to_string(port));
  EXPECT_EQ((*c)["base_ids"].get<std::vector<std::string>>(), bases) << doc.dump(2);
  // Without the CA the certificate is not trusted: listed, with the reason.
  const nlohmann::json untrusted = discover_json("--timeout 2");
  c = find_named(untrusted, "rack-tls");
  ASSERT_NE(c, nullptr) << untrusted.dump(2);
  EXPECT_TRUE((*c)["base_ids"].empty()) << untrusted.dump(2);
  EXPECT_TRUE(c->contains("bases_error")) << untrusted.dump(2);
}

TEST_F(DiscoveryTest, UpdateBasesRepublishesTheTxt) {
  Publisher p(options("rack-upd", 8083, ids(2)));
  ASSERT_TRUE(p.wait_established(milliseconds(10000)));
  p.update_bases(ids(3, 'd'));
  std::vector<std::string> seen_ids;
  for (int attempt = 0; attempt < 5 && seen_ids != ids(3, 'd'); ++attempt) {
    for (const auto& c : browse(milliseconds(1500))) {
      if (c.name == "rack-upd") seen_ids = c.base_ids;
    }
  }
  EXPECT_EQ(seen_ids, ids(3, 'd'));
}

TEST_F(DiscoveryTest, DestroyingThePublisherWithdrawsTheService) {
  {
    Publisher p(options("rack-bye", 8087, ids(1)));
    ASSERT_TRUE(p.wait_established(milliseconds(10000)));
  }
  // Browsers drop it once the goodbye is through (mDNS caches hold it a moment).
  bool gone = false;
  for (int attempt = 0; attempt < 5 && !gone; ++attempt) {
    const auto seen = browse(milliseconds(1000));
    gone = std::none_of(seen.begin(), seen.end(), [](const Cloudlet& c) { return c.name == "rack-bye"; });
  }
  EXPECT_TRUE(gone);
}

TEST_F(DiscoveryTest, PublisherComesBackAfterAvahiDaemonRestarts) {
  Notices notices;
  Publisher p(options("rack-restart", 8084, ids(1), &notices));
  ASSERT_TRUE(p.wait_established(milliseconds(10000))) << notices.all();
  sandbox_.stop_avahi();
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (p.state() == Publisher::State::kEstablished && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_EQ(p.state(), Publisher::State::kWaitingForDaemon) << notices.all();
  ASSERT_TRUE(sandbox_.start_avahi()) << sandbox_.why();
  ASSERT_TRUE(p.wait_established(milliseconds(15000))) << notices.all();
  EXPECT_TRUE(notices.any("lost avahi-daemon")) << notices.all();
  const nlohmann::json doc = discover_json();
  EXPECT_NE(find_named(doc, "rack-restart"), nullptr) << doc.dump(2);
}

// No avahi-daemon: the bus is there but nobody owns org.freedesktop.Avahi.
class NoAvahiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!MdnsSandbox::can_run()) GTEST_SKIP() << "needs root for the network and mount namespaces of avahi-daemon";
    ASSERT_TRUE(sandbox_.start_bus()) << sandbox_.why();
  }
  MdnsSandbox sandbox_;
};

TEST_F(NoAvahiTest, PublisherReportsANoticeKeepsTryingAndRegistersWhenTheDaemonStarts) {
  Notices notices;
  std::unique_ptr<Publisher> p;
  ASSERT_NO_THROW(p = std::make_unique<Publisher>(options("rack-late", 8085, ids(2), &notices)));
  EXPECT_EQ(p->state(), Publisher::State::kWaitingForDaemon);
  EXPECT_TRUE(notices.any("avahi-daemon is not running")) << notices.all();
  EXPECT_EQ(p->name(), "");
  ASSERT_TRUE(sandbox_.start_avahi()) << sandbox_.why();
  ASSERT_TRUE(p->wait_established(milliseconds(15000))) << notices.all();
  EXPECT_EQ(p->name(), "rack-late");
}

// vmsynthd with --mdns (its default) where no avahi-daemon runs: it serves
// anyway, and says why it is not advertised.
TEST_F(NoAvahiTest, VmsynthdServesWithANoticeWhenAvahiIsMissing) {
  const std::string t = sandbox_.dir().sub("daemon");
  ASSERT_EQ(run_command("mkdir -p '" + t + "/bases'").exit_code, 0);
  testutil::Daemon d({VMSYNTHD_BIN, "--listen", "127.0.0.1:0", "--bases", t + "/bases", "--state", t + "/state"},
                     t + "/vmsynthd.log");
  ASSERT_TRUE(d.wait_for_log("listening on http://", milliseconds(30000))) << d.log();
  ASSERT_TRUE(d.wait_for_log("mdns: ", milliseconds(10000))) << d.log();
  EXPECT_NE(d.log().find("not running"), std::string::npos) << d.log();
  const std::string log = d.log();
  const size_t at = log.find("http://");
  const std::string url = log.substr(at, log.find('\n', at) - at);
  auto health = run_command("curl -sS --max-time 10 " + url + "/v1/health");
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_NE(health.output.find("\"ok\""), std::string::npos) << health.output;
  EXPECT_TRUE(d.running()) << d.log();
}

TEST_F(NoAvahiTest, DiscoverFailsWithAClearMessage) {
  auto r = discover("--timeout 1");
  EXPECT_EQ(r.exit_code, static_cast<int>(ErrorCode::kUnsupported)) << r.output;
  EXPECT_NE(r.output.find("is avahi-daemon running?"), std::string::npos) << r.output;
  auto j = run_command("(timeout 60 '" VMSYNTH_BIN "' discover --json --timeout 1 2>/dev/null)");
  EXPECT_EQ(j.exit_code, static_cast<int>(ErrorCode::kUnsupported)) << j.output;
  const nlohmann::json doc = nlohmann::json::parse(j.output, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << j.output;
  EXPECT_EQ(doc["ok"], false);
  EXPECT_EQ(doc["error"]["code"], "unsupported");
  EXPECT_NE(doc["error"]["message"].get<std::string>().find("is avahi-daemon running?"), std::string::npos);
  EXPECT_THROW(browse(milliseconds(500)), Error);
}

// Not even a system bus (the sandbox starts nothing): the Publisher still does
// not throw, and retries.
TEST(NoBusTest, PublisherReportsANoticeAndDoesNotThrow) {
  MdnsSandbox nothing_running;
  Notices notices;
  {
    std::unique_ptr<Publisher> p;
    ASSERT_NO_THROW(p = std::make_unique<Publisher>(options("rack-nobus", 8086, ids(1), &notices)));
    EXPECT_EQ(p->state(), Publisher::State::kWaitingForDaemon);
    EXPECT_FALSE(p->wait_established(milliseconds(500)));  // several retries happen meanwhile
  }
  EXPECT_TRUE(notices.any("is avahi-daemon running?")) << notices.all();
  auto r = discover("--timeout 1");
  EXPECT_EQ(r.exit_code, static_cast<int>(ErrorCode::kUnsupported)) << r.output;
  EXPECT_NE(r.output.find("is avahi-daemon running?"), std::string::npos) << r.output;
}

// ---------------------------------------------------------------------------
// The pure parts.
// ---------------------------------------------------------------------------

TEST(TxtEntries, InlineUpToWhatFitsIn255BytesThenADigest) {
  // "bases=" + 7 ids of 32 + 6 commas = 236 bytes; 8 ids = 269.
  const auto seven = txt_entries(false, ids(7));
  ASSERT_EQ(seven.size(), 4u);
  EXPECT_EQ(seven[0], "txtvers=1");
  EXPECT_EQ(seven[1], "api=v1");
  EXPECT_EQ(seven[2], "tls=0");
  EXPECT_EQ(seven[3].rfind("bases=", 0), 0u);
  EXPECT_LE(seven[3].size(), kMaxTxtEntry);
  const auto eight = txt_entries(true, ids(8));
  ASSERT_EQ(eight.size(), 5u);
  EXPECT_EQ(eight[2], "tls=1");
  EXPECT_EQ(eight[3], "bases_digest=" + bases_digest(ids(8)));
  EXPECT_EQ(eight[4], "nbases=8");
  EXPECT_EQ(txt_entries(false, {}).back(), "bases=");
  EXPECT_THROW(txt_entries(false, {"not-an-id"}), Error);
}

TEST(BasesDigest, First16HexOfSha256OverSortedLowerCaseIdsJoinedByCommas) {
  std::vector<std::string> b = {"F" + std::string(31, '0'), "0" + std::string(31, 'e')};
  const std::string joined = b[1] + "," + "f" + std::string(31, '0');
  auto r = run_command("printf '%s' '" + joined + "' | sha256sum | cut -c1-16");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(bases_digest(b) + "\n", r.output);
  EXPECT_EQ(bases_digest({b[1], b[0]}), bases_digest(b));
}

TEST(CloudletUrl, BracketsIpv6AndEncodesItsZone) {
  EXPECT_EQ(cloudlet_url("192.0.2.7", 8080, false), "http://192.0.2.7:8080");
  EXPECT_EQ(cloudlet_url("2001:db8::7", 443, true), "https://[2001:db8::7]:443");
  EXPECT_EQ(cloudlet_url("fe80::7%eth0", 80, false), "http://[fe80::7%25eth0]:80");
}

TEST(PickCloudlet, PrefersTlsThenNameAmongThoseHoldingTheBase) {
  const std::string want = ids(1, 'e')[0];
  auto cloudlet = [](std::string name, bool tls, std::vector<std::string> base_ids) {
    Cloudlet c;
    c.name = name;
    c.tls = tls;
    c.url = (tls ? "https://" : "http://") + name;
    c.base_ids = std::move(base_ids);
    return c;
  };
  std::vector<Cloudlet> cs = {cloudlet("b", false, {want}), cloudlet("a", false, {want}),
                              cloudlet("z", true, {ids(1, 'f')[0]}), cloudlet("digest-only", true, {})};
  cs[3].bases_digest = "0123456789abcdef";
  cs[3].nbases = 50;
  EXPECT_EQ(pick_cloudlet(cs, want), &cs[1]);
  std::string upper = want;
  for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  EXPECT_EQ(pick_cloudlet(cs, upper), &cs[1]);
  cs[0].tls = true;
  EXPECT_EQ(pick_cloudlet(cs, want), &cs[0]);
  EXPECT_EQ(pick_cloudlet(cs, ids(1, '9')[0]), nullptr);
  EXPECT_EQ(pick_cloudlet({}, want), nullptr);
}

}  // namespace
}  // namespace vmsynth::cloudlet

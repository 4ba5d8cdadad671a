// The two SSH hosts the remote tests run on (fixtures/ssh_hosts.sh): each answers at its own
// address with its own resources, a detached process outlives its connection and a cut link, and a
// cut host is unreachable until restored.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "base/subprocess.h"
#include "engines.h"
#include "flow/machine.h"

namespace sdstack {
namespace {

using testing::Engine;
using Clock = std::chrono::steady_clock;

constexpr int64_t kHost1MemoryBytes = 3LL * 1024 * 1024 * 1024;

// Runs `action` when the scope ends, also when a failed ASSERT returns early.
class AtScopeExit {
 public:
  explicit AtScopeExit(std::function<void()> action) : action_(std::move(action)) {}
  ~AtScopeExit() { action_(); }
  AtScopeExit(const AtScopeExit&) = delete;
  AtScopeExit& operator=(const AtScopeExit&) = delete;

 private:
  std::function<void()> action_;
};

// ssh's argv for `command` on the host at `addr`: the key only, never a prompt, the fixture's host
// keys; a cut host fails the connect within ConnectTimeout, a session on it within about
// ServerAliveInterval * ServerAliveCountMax.
std::vector<std::string> ssh_argv(const Engine& hosts, const std::string& addr, const std::string& command) {
  return {"ssh", "-i", hosts.at("IDENTITY_FILE"), "-p", hosts.at("SSH_PORT"),
          "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
          "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + hosts.at("KNOWN_HOSTS"),
          "-o", "ConnectTimeout=2", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=3",
          "-o", "LogLevel=ERROR", hosts.at("SSH_USER") + "@" + addr, command};
}

base::ProcessOutput ssh(const Engine& hosts, const std::string& addr, const std::string& command) {
  auto result = base::run_process(ssh_argv(hosts, addr, command));
  if (!result.is_ok()) {
    ADD_FAILURE() << result.status().message();
    return {-1, "", result.status().message()};
  }
  return *result;
}

std::string trimmed(std::string text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Whether `ssh addr true` succeeds within `seconds` (a restored link takes a moment).
bool answers_within(const Engine& hosts, const std::string& addr, double seconds) {
  Clock::time_point start = Clock::now();
  while (seconds_since(start) < seconds) {
    if (ssh(hosts, addr, "true").exit_code == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

// Whether `pid` is one of the processes inside the network namespace `ns`.
bool runs_inside(const std::string& ns, pid_t pid) {
  auto pids = base::run_process({"ip", "netns", "pids", ns});
  if (!pids.is_ok() || pids->exit_code != 0) return false;
  std::istringstream lines(pids->out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line == std::to_string(pid)) return true;
  }
  return false;
}

TEST(SshHostsTest, EachHostAnswersAtItsOwnAddress) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  const std::string host1 = hosts.at("HOST1_ADDR");
  const std::string host2 = hosts.at("HOST2_ADDR");
  ASSERT_NE(host1, host2);
  for (const auto& [addr, other] : {std::pair{host1, host2}, std::pair{host2, host1}}) {
    auto addresses = ssh(hosts, addr, "ip -4 -o addr show");
    ASSERT_EQ(addresses.exit_code, 0) << addr << ": " << addresses.err;
    EXPECT_NE(addresses.out.find("inet " + addr + "/"), std::string::npos) << addresses.out;
    EXPECT_EQ(addresses.out.find("inet " + other + "/"), std::string::npos) << addresses.out;
  }
}

TEST(SshHostsTest, Host1HasOneCpuAndHost2TheMachines) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  auto cpus1 = ssh(hosts, hosts.at("HOST1_ADDR"), "nproc");
  auto cpus2 = ssh(hosts, hosts.at("HOST2_ADDR"), "nproc");
  ASSERT_EQ(cpus1.exit_code, 0) << cpus1.err;
  ASSERT_EQ(cpus2.exit_code, 0) << cpus2.err;
  EXPECT_EQ(trimmed(cpus1.out), "1");
  EXPECT_EQ(trimmed(cpus1.out), hosts.at("HOST1_CPUS"));
  EXPECT_EQ(trimmed(cpus2.out), hosts.at("HOST2_CPUS"));
  if (sysconf(_SC_NPROCESSORS_ONLN) > 1) {
    EXPECT_GT(std::atoi(cpus2.out.c_str()), 1);
  }
}

TEST(SshHostsTest, Host1sMemoryLimitIsWhatARunThereDetects) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  EXPECT_EQ(hosts.at("HOST1_MEMORY_BYTES"), std::to_string(kHost1MemoryBytes));
  // The hosts share this machine's file systems, so their /proc/self/cgroup resolves here as there.
  auto cgroup1 = ssh(hosts, hosts.at("HOST1_ADDR"), "cat /proc/self/cgroup");
  ASSERT_EQ(cgroup1.exit_code, 0) << cgroup1.err;
  EXPECT_EQ(flow::cgroup_memory_limit(cgroup1.out, "/sys/fs/cgroup"), kHost1MemoryBytes) << cgroup1.out;
  // And a run there sees the cgroup files (sshd must not run in a mount namespace that hides them).
  const std::string& dir = hosts.at("HOST1_CGROUP");
  auto inside = ssh(hosts, hosts.at("HOST1_ADDR"),
                    "cat " + dir + "/memory.limit_in_bytes 2>/dev/null || cat " + dir + "/memory.max");
  EXPECT_EQ(trimmed(inside.out), std::to_string(kHost1MemoryBytes)) << inside.err;

  auto cgroup2 = ssh(hosts, hosts.at("HOST2_ADDR"), "cat /proc/self/cgroup");
  ASSERT_EQ(cgroup2.exit_code, 0) << cgroup2.err;
  int64_t limit2 = flow::cgroup_memory_limit(cgroup2.out, "/sys/fs/cgroup");
  EXPECT_TRUE(limit2 == 0 || limit2 > kHost1MemoryBytes) << "host2 is limited to " << limit2 << " bytes";
}

TEST(SshHostsTest, DetachedProcessOutlivesItsConnectionAndACut) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  const std::string host1 = hosts.at("HOST1_ADDR");
  // As the runner starts a job: its own session, no terminal, nothing tying it to the connection.
  auto started = ssh(hosts, host1, "setsid nohup sleep 1000 </dev/null >/dev/null 2>&1 & echo $!");
  ASSERT_EQ(started.exit_code, 0) << started.err;
  pid_t pid = std::atoi(started.out.c_str());
  ASSERT_GT(pid, 1) << started.out;
  // The hosts share this machine's PID namespace, so the process can be seen and ended from here.
  AtScopeExit end_it([pid] {
    std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    if (comm >> name && name == "sleep") kill(pid, SIGKILL);
  });

  auto after = ssh(hosts, host1, "ps -o sid=,comm= -p " + std::to_string(pid));
  ASSERT_EQ(after.exit_code, 0) << "gone once its connection ended: " << after.err;
  std::istringstream fields(after.out);  // ps pads the columns
  pid_t session = 0;
  std::string name;
  fields >> session >> name;
  EXPECT_EQ(session, pid) << "it does not lead its own session: " << after.out;
  EXPECT_EQ(name, "sleep") << after.out;
  EXPECT_TRUE(runs_inside(hosts.at("HOST1_NS"), pid));

  testing::engine_script("ssh_hosts", "cut", {"host1"});
  AtScopeExit restore([] { testing::engine_script("ssh_hosts", "restore", {"host1"}); });
  EXPECT_NE(ssh(hosts, host1, "true").exit_code, 0) << "host1 still answers after its cut";
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(kill(pid, 0), 0) << "gone after the cut";
  EXPECT_TRUE(runs_inside(hosts.at("HOST1_NS"), pid));

  testing::engine_script("ssh_hosts", "restore", {"host1"});
  ASSERT_TRUE(answers_within(hosts, host1, 10)) << "host1 does not answer after restore";
  EXPECT_EQ(ssh(hosts, host1, "kill -0 " + std::to_string(pid)).exit_code, 0);
}

TEST(SshHostsTest, CutHostFailsWith255UntilRestored) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  const std::string host1 = hosts.at("HOST1_ADDR");
  ASSERT_EQ(ssh(hosts, host1, "true").exit_code, 0);
  testing::engine_script("ssh_hosts", "cut", {"host1"});
  AtScopeExit restore([] { testing::engine_script("ssh_hosts", "restore", {"host1"}); });

  Clock::time_point start = Clock::now();
  auto cut_off = ssh(hosts, host1, "true");
  EXPECT_EQ(cut_off.exit_code, 255) << cut_off.err;  // ssh's own failure, not the command's
  EXPECT_LT(seconds_since(start), 10.0);
  auto other = ssh(hosts, hosts.at("HOST2_ADDR"), "true");
  EXPECT_EQ(other.exit_code, 0) << "host2 is hit by host1's cut: " << other.err;

  testing::engine_script("ssh_hosts", "restore", {"host1"});
  EXPECT_TRUE(answers_within(hosts, host1, 10)) << "host1 does not answer after restore";
}

TEST(SshHostsTest, SessionOnACutHostEndsWith255) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  const std::string host1 = hosts.at("HOST1_ADDR");
  base::SpawnOptions options;
  options.argv = ssh_argv(hosts, host1, "echo started; exec sleep 60");
  auto session = base::spawn_process(options);
  ASSERT_TRUE(session.is_ok()) << session.status().message();
  pid_t pid = session->pid;
  bool reaped = false;
  AtScopeExit reap([pid, &reaped] {
    if (reaped) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  });

  // Cut only once the session runs, so the cut hits a live connection, not the connect.
  std::string out;
  Clock::time_point start = Clock::now();
  while (out.find("started") == std::string::npos && seconds_since(start) < 10) {
    char buffer[256];
    ssize_t n = read(session->stdout_fd.get(), buffer, sizeof(buffer));
    if (n > 0) out.append(buffer, static_cast<size_t>(n));
    else std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_NE(out.find("started"), std::string::npos) << "the session did not start";

  testing::engine_script("ssh_hosts", "cut", {"host1"});
  AtScopeExit restore([] { testing::engine_script("ssh_hosts", "restore", {"host1"}); });
  start = Clock::now();
  int status = 0;
  while (seconds_since(start) < 20) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      reaped = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(reaped) << "ssh still runs 20 s after its host was cut";
  EXPECT_EQ(base::exit_code_from_wait_status(status), 255);
  EXPECT_LT(seconds_since(start), 10.0);  // about ServerAliveInterval * ServerAliveCountMax
}

}  // namespace
}  // namespace sdstack

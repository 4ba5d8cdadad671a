// Remote runs end to end, on the engines the fixtures start: two SSH hosts in network namespaces
// (host1: 1 CPU, 3 GiB, $0.50/h; host2: both CPUs, all memory, $1.00/h), a one-node Slurm cluster
// and Swift's S3 API. Each test has its own project, SDSTACK_HOME and remote folder.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "base/file.h"
#include "base/subprocess.h"
#include "engines.h"
#include "flow/s3.h"
#include "testing/project.h"

namespace sdstack {
namespace {

using testing::CommandResult;
using testing::contains;
using testing::TempDir;

// A job that ticks until SIGTERM, whose trap leaves out/state as its artifact.
constexpr const char* kTicker =
    "  - name: ticker\n"
    "    commands:\n"
    "      - mkdir -p out\n"
    "      - trap 'echo got-term; echo stopped > out/state; exit 0' TERM\n"
    "      - for i in $(seq 1 600); do echo tick $i; sleep 0.2; done & wait\n"
    "    artifacts:\n"
    "      - path: ./out\n";

class RemoteRunTest : public testing::ProjectTest {
 protected:
  // `sdstack config ssh lab` with both hosts; lost after `lost_after`.
  void configure_hosts(const testing::Engine& hosts, const std::string& lost_after = "8s") {
    CommandResult config = sd({"config", "ssh", "lab", "--host", hosts.at("SSH_USER") + "@" + hosts.at("HOST1_ADDR"),
                               "--host", hosts.at("SSH_USER") + "@" + hosts.at("HOST2_ADDR"), "--price", "0.5",
                               "--price", "1.0", "-i", hosts.at("IDENTITY_FILE"), "--dir", remote_.file("ssh")});
    ASSERT_EQ(config.exit_code, 0) << config.err;
    ASSERT_EQ(sd({"config", "lost-after", lost_after}).exit_code, 0);
  }

  void configure_slurm(const testing::Engine& slurm) {
    CommandResult config = sd({"config", "slurm", "cluster", "--slurm-conf", slurm.at("SLURM_CONF"), "--dir",
                               remote_.file("slurm"), "--price", "0.1"});
    ASSERT_EQ(config.exit_code, 0) << config.err;
  }

  void configure_s3(const testing::Engine& swift) {
    extra_env_ = {"AWS_ACCESS_KEY_ID=" + swift.at("S3_ACCESS_KEY"), "AWS_SECRET_ACCESS_KEY=" + swift.at("S3_SECRET_KEY")};
    CommandResult config = sd({"config", "s3", "--endpoint", swift.at("S3_ENDPOINT"), "--region",
                               swift.at("S3_REGION"), "--bucket", bucket_, "--prefix", "t/"});
    ASSERT_EQ(config.exit_code, 0) << config.err;
  }

  // The seed example, initialised, with its model made by the local stable-diffusion run.
  void seed_example() {
    copy_seed_example();
    ASSERT_EQ(sd({"init"}).exit_code, 0);
    CommandResult pull = sd({"run", "stable-diffusion", "-e", "HF_HUB_OFFLINE=1"});
    ASSERT_EQ(pull.exit_code, 0) << pull.err;
  }

  // The newest run of `workflow` in `sdstack ps -a`.
  std::string last_run(const std::string& workflow) {
    std::istringstream lines(sd({"ps", "-a"}).out);
    std::string line, run;
    while (std::getline(lines, line)) {
      if (contains(line, " " + workflow + " ") && run.empty()) run = line.substr(0, line.find(' '));
    }
    return run;
  }

  // Runs prompt-stable remotely with these options and checks output/0.png comes back.
  void prompt_comes_back(std::vector<std::string> options) {
    std::vector<std::string> args = {"run", "prompt-stable", "--remote"};
    args.insert(args.end(), options.begin(), options.end());
    args.insert(args.end(), {"-P", "cats in hats", "--steps", "2", "--seed", "7"});
    CommandResult prompt = sd(args);
    ASSERT_EQ(prompt.exit_code, 0) << prompt.err << prompt.out;
    std::string run = last_run("prompt-stable");
    TempDir download;
    CommandResult got = sd({"artifacts", "download", run, "--to", download.path(), "--verify"});
    ASSERT_EQ(got.exit_code, 0) << got.err;
    auto png = base::read_file(download.file("output/0.png"));
    ASSERT_TRUE(png.is_ok()) << logs(run);
    EXPECT_EQ(png->substr(1, 3), "PNG");
  }

  TempDir remote_;
  std::string bucket_ = "sdstack-test";
};

TEST_F(RemoteRunTest, SeedPromptRunsOnAnSshHost) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  configure_hosts(hosts);
  seed_example();
  // 8 GB of memory: only host2 has it, though host1 is cheaper.
  prompt_comes_back({});
  std::string log = logs(last_run("prompt-stable"));
  EXPECT_TRUE(contains(log, "offer lab/" + hosts.at("HOST2_ADDR"))) << log;
  EXPECT_TRUE(contains(log, "artifacts fetched into the local store")) << log;
}

TEST_F(RemoteRunTest, OffersTakeTheCheaperHostThatFits) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  configure_hosts(hosts);
  const std::string host1 = "lab/" + hosts.at("HOST1_ADDR"), host2 = "lab/" + hosts.at("HOST2_ADDR");
  CommandResult offers = sd({"offers", "--memory", "1GB"});
  ASSERT_EQ(offers.exit_code, 0) << offers.err;
  EXPECT_LT(offers.out.find(host1), offers.out.find(host2)) << offers.out;
  CommandResult two = sd({"offers", "--cpu", "2"});
  EXPECT_FALSE(contains(two.out, host1)) << two.out;
  EXPECT_TRUE(contains(two.out, host2)) << two.out;

  write_workflows("workflows:\n  - name: where\n    commands:\n      - echo \"cpus=$(nproc)\"\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult cheap = sd({"run", "where", "--remote"});
  ASSERT_EQ(cheap.exit_code, 0) << cheap.err;
  EXPECT_TRUE(contains(cheap.out, "cpus=1")) << cheap.out;
  EXPECT_TRUE(contains(cheap.err + cheap.out, "offer " + host1)) << cheap.err;
  CommandResult bigger = sd({"run", "where", "--remote", "--cpu", "2"});
  ASSERT_EQ(bigger.exit_code, 0) << bigger.err;
  EXPECT_TRUE(contains(bigger.out, "cpus=" + hosts.at("HOST2_CPUS"))) << bigger.out;

  CommandResult impossible = sd({"run", "where", "--remote", "--gpu", "1"});
  EXPECT_EQ(impossible.exit_code, 1);
  EXPECT_TRUE(contains(impossible.err, "no offer can give what this run asks for (1 GPU); the nearest:")) << impossible.err;
  EXPECT_TRUE(contains(impossible.err, host1 + " (1 CPU")) << impossible.err;
  EXPECT_TRUE(contains(impossible.err, "lacks 1 GPU (it has none)")) << impossible.err;
  std::istringstream lines(sd({"ps", "-a"}).out);
  int runs = 0;
  for (std::string line; std::getline(lines, line);) runs += contains(line, " where ") ? 1 : 0;
  EXPECT_EQ(runs, 2);  // the two runs that went; the refused one left no record
}

TEST_F(RemoteRunTest, LogsStreamAndStopReachesTheSshHost) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  configure_hosts(hosts);
  write_workflows(
      std::string("workflows:\n") + kTicker);
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string run = detached({"ticker", "--remote", "--stop-grace", "20"});
  ASSERT_TRUE(wait_for([&] { return contains(logs(run), "tick 5"); }, 90)) << logs(run);
  EXPECT_EQ(status_of(run), "running");
  ASSERT_EQ(sd({"stop", run}).exit_code, 0);
  ASSERT_TRUE(wait_for([&] { return finished(run); }, 60)) << logs(run);
  EXPECT_EQ(status_of(run), "stopped") << logs(run);
  EXPECT_TRUE(contains(logs(run), "got-term")) << logs(run);
  TempDir download;
  ASSERT_EQ(sd({"artifacts", "download", run, "--to", download.path()}).exit_code, 0);
  EXPECT_EQ(*base::read_file(download.file("out/state")), "stopped\n");
}

TEST_F(RemoteRunTest, TimeLimitStopsTheJob) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  configure_hosts(hosts);
  write_workflows(
      "workflows:\n"
      "  - name: forever\n"
      "    commands:\n"
      "      - trap 'echo got-term; exit 0' TERM\n"
      "      - sleep 600 & wait\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  EXPECT_EQ(sd({"run", "forever", "--remote", "--time", "soon"}).exit_code, 2);
  CommandResult run = sd({"run", "forever", "--remote", "--time", "3s"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_TRUE(contains(run.out, "got-term")) << run.out;
  EXPECT_TRUE(contains(run.err, "time limit of 3 s reached")) << run.err;
  EXPECT_EQ(status_of(last_run("forever")), "failed");
}

TEST_F(RemoteRunTest, SecretsReachTheHostButNoLogOrDisk) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  configure_hosts(hosts);
  write_workflows("workflows:\n  - name: secret\n    commands:\n      - echo \"token=$API_TOKEN len=${#API_TOKEN}\"\n"
                  "      - grep -rlF \"$API_TOKEN\" " + remote_.path() + " | sed 's/^/ON-DISK /' || true\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult add = sd({"secrets", "add", "API_TOKEN", "s3cr3t-v4lue"});
  ASSERT_EQ(add.exit_code, 0) << add.err;
  CommandResult run = sd({"run", "secret", "--remote"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(contains(run.out, "token=*** len=12")) << run.out;
  EXPECT_FALSE(contains(run.out + run.err, "s3cr3t")) << run.out;
  EXPECT_FALSE(contains(run.out, "ON-DISK")) << run.out;
}

TEST_F(RemoteRunTest, LostHostIsReportedAndRetriedOnTheOther) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  configure_hosts(hosts, "6s");
  write_workflows(
      "workflows:\n"
      "  - name: slow\n"
      "    commands:\n"
      "      - echo \"start on $(hostname -I)\"\n"
      "      - sleep 8\n"
      "      - mkdir -p out && echo finished > out/result\n"
      "    artifacts:\n"
      "      - path: ./out\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  struct Restore {
    ~Restore() { testing::engine_script("ssh_hosts", "restore", {"host1"}); }
  } restore;

  // Without --retry: lost, and said so.
  std::string lost = detached({"slow", "--remote", "--memory", "1GB"});
  ASSERT_TRUE(wait_for([&] { return contains(logs(lost), "start on"); }, 90)) << logs(lost);
  EXPECT_TRUE(contains(logs(lost), hosts.at("HOST1_ADDR"))) << logs(lost);
  testing::engine_script("ssh_hosts", "cut", {"host1"});
  ASSERT_TRUE(wait_for([&] { return finished(lost); }, 90)) << logs(lost);
  EXPECT_EQ(status_of(lost), "failed");
  EXPECT_TRUE(contains(logs(lost), "host root@" + hosts.at("HOST1_ADDR") + " (lab/" + hosts.at("HOST1_ADDR") +
                                       ") lost: no answer for 6 s"))
      << logs(lost);
  testing::engine_script("ssh_hosts", "restore", {"host1"});

  // With --retry 1: lost on host1, done on host2.
  std::string retried = detached({"slow", "--remote", "--memory", "1GB", "--retry", "1"});
  ASSERT_TRUE(wait_for([&] { return contains(logs(retried), "start on"); }, 90)) << logs(retried);
  testing::engine_script("ssh_hosts", "cut", {"host1"});
  ASSERT_TRUE(wait_for([&] { return finished(retried); }, 120)) << logs(retried);
  std::string log = logs(retried);
  EXPECT_EQ(status_of(retried), "done") << log;
  EXPECT_TRUE(contains(log, "lost: no answer")) << log;
  EXPECT_TRUE(contains(log, "retrying on offer lab/" + hosts.at("HOST2_ADDR"))) << log;
  TempDir download;
  ASSERT_EQ(sd({"artifacts", "download", retried, "--to", download.path()}).exit_code, 0);
  EXPECT_EQ(*base::read_file(download.file("out/result")), "finished\n");
}

TEST_F(RemoteRunTest, SeedPromptRunsOnSlurm) {
  SDSTACK_REQUIRE_ENGINE(slurm, "slurm");
  configure_slurm(slurm);
  seed_example();
  prompt_comes_back({"--backend", "cluster"});
  EXPECT_TRUE(contains(logs(last_run("prompt-stable")), "submitted to Slurm on cluster/"));
}

TEST_F(RemoteRunTest, SlurmStopAndOutOfMemory) {
  SDSTACK_REQUIRE_ENGINE(slurm, "slurm");
  configure_slurm(slurm);
  write_workflows(
      std::string("workflows:\n") + kTicker +
      "  - name: hog\n"
      "    commands:\n"
      "      - head -c 800M /dev/zero | tail\n");  // tail holds the one 800 MB \"line\" in memory
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string run = detached({"ticker", "--remote", "--stop-grace", "20"});
  ASSERT_TRUE(wait_for([&] { return contains(logs(run), "tick 5"); }, 90)) << logs(run);
  ASSERT_EQ(sd({"stop", run}).exit_code, 0);
  ASSERT_TRUE(wait_for([&] { return finished(run); }, 60)) << logs(run);
  EXPECT_EQ(status_of(run), "stopped") << logs(run);
  EXPECT_TRUE(contains(logs(run), "got-term")) << logs(run);

  CommandResult hog = sd({"run", "hog", "--remote", "--memory", "100MB"});
  EXPECT_NE(hog.exit_code, 0);
  std::string log = logs(last_run("hog"));
  EXPECT_EQ(status_of(last_run("hog")), "failed");
  EXPECT_TRUE(contains(log, "out of memory")) << log;
}

TEST_F(RemoteRunTest, SlurmJobCancelledOutsideSdstackFailsWithItsReason) {
  SDSTACK_REQUIRE_ENGINE(slurm, "slurm");
  configure_slurm(slurm);
  write_workflows("workflows:\n  - name: long\n    commands:\n      - for i in $(seq 1 600); do echo tick $i; sleep 0.2; done\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string run = detached({"long", "--remote"});
  ASSERT_TRUE(wait_for([&] { return contains(logs(run), "tick 3"); }, 90)) << logs(run);
  std::string log = logs(run);
  size_t at = log.find("as job ");
  ASSERT_NE(at, std::string::npos) << log;
  std::string job = log.substr(at + 7, log.find('\n', at) - at - 7);
  std::vector<std::string> env = {"SLURM_CONF=" + slurm.at("SLURM_CONF"), "PATH=/usr/bin:/bin"};
  auto cancelled = base::run_process({"scancel", job}, "", &env);
  ASSERT_TRUE(cancelled.is_ok());
  ASSERT_EQ(cancelled->exit_code, 0) << cancelled->err;
  ASSERT_TRUE(wait_for([&] { return finished(run); }, 60)) << logs(run);
  EXPECT_EQ(status_of(run), "failed") << logs(run);
  EXPECT_TRUE(contains(logs(run), "Slurm job " + job + ": cancel")) << logs(run);
}

TEST_F(RemoteRunTest, ArtifactsGoThroughS3) {
  SDSTACK_REQUIRE_ENGINE(hosts, "ssh_hosts");
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  configure_hosts(hosts);
  configure_s3(swift);
  write_workflows(
      "workflows:\n"
      "  - name: make\n"
      "    commands:\n"
      "      - mkdir -p data && head -c 3000000 /dev/urandom > data/blob && sha256sum data/blob > data/blob.sum\n"
      "    artifacts:\n"
      "      - path: ./data\n"
      "  - name: use\n"
      "    deps:\n"
      "      - workflow: make\n"
      "    commands:\n"
      "      - sha256sum -c data/blob.sum && echo dep-ok\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult made = sd({"run", "make", "--remote"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  std::string run = last_run("make");
  EXPECT_TRUE(contains(logs(run), "artifacts are in the S3 store")) << logs(run);

  // In the bucket: the manifest and the objects.
  flow::S3Config s3;
  s3.endpoint = swift.at("S3_ENDPOINT");
  s3.region = swift.at("S3_REGION");
  s3.bucket = bucket_;
  s3.prefix = "t/";
  s3.access_key = swift.at("S3_ACCESS_KEY");
  s3.secret_key = swift.at("S3_SECRET_KEY");
  flow::S3Client client(s3);
  auto manifests = client.list("manifests/");
  ASSERT_TRUE(manifests.is_ok()) << manifests.status().message();
  ASSERT_EQ(manifests->size(), 1u);
  EXPECT_TRUE(contains(manifests->front(), "/" + run + ".json")) << manifests->front();
  auto objects = client.list("objects/");
  ASSERT_TRUE(objects.is_ok());
  EXPECT_EQ(objects->size(), 2u);

  // Back here, identical: the file's digest as the job computed it.
  TempDir download;
  CommandResult got = sd({"artifacts", "download", run, "--to", download.path(), "--verify"});
  ASSERT_EQ(got.exit_code, 0) << got.err;
  auto check = base::run_process({"sha256sum", "-c", "data/blob.sum"}, download.path());
  ASSERT_TRUE(check.is_ok());
  EXPECT_EQ(check->exit_code, 0) << check->out << check->err;

  // A remote dep comes from the bucket.
  CommandResult used = sd({"run", "use", "--remote"});
  ASSERT_EQ(used.exit_code, 0) << used.err << used.out;
  EXPECT_TRUE(contains(used.out, "dep-ok")) << used.out;
  EXPECT_TRUE(contains(logs(last_run("use")), "fetched from S3 into the working dir")) << logs(last_run("use"));
}

}  // namespace
}  // namespace sdstack

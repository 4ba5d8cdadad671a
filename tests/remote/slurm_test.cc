// The one-node Slurm cluster (fixtures/slurm.sh) driven through flow/slurm.h's argv builders and
// parsers: a job's output and exit status, a non-zero exit, a job over its --mem, a graceful stop
// that the program sees as SIGTERM, an abort that it doesn't, and the partition sinfo describes.
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/subprocess.h"
#include "engines.h"
#include "flow/slurm.h"

extern char** environ;

namespace sdstack {
namespace {

using flow::SlurmJobState;
using Clock = std::chrono::steady_clock;
using Cause = SlurmJobState::Cause;
using Phase = SlurmJobState::Phase;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Slurm's clients pointed at the fixture's cluster, and a scratch folder for the jobs' scripts,
// outputs and marker files (removed with the object).
class SlurmCluster {
 public:
  explicit SlurmCluster(const testing::Engine& engine) : engine_(engine) {
    for (char** variable = environ; *variable != nullptr; ++variable) {
      if (std::string(*variable).rfind("SLURM_CONF=", 0) != 0) env_.push_back(*variable);
    }
    env_.push_back("SLURM_CONF=" + engine.at("SLURM_CONF"));
    std::string pattern = (std::filesystem::temp_directory_path() / "sdstack-slurm-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp " << pattern << " failed";
    work_dir_ = pattern;
  }
  ~SlurmCluster() {
    // A test that failed half-way leaves no job running into the next one.
    for (const std::string& id : job_ids_) (void)run(flow::scancel_argv(id, true));
    std::error_code ignored;
    std::filesystem::remove_all(work_dir_, ignored);
  }

  const std::string& work_dir() const { return work_dir_; }
  std::string path(const std::string& name) const { return work_dir_ + "/" + name; }

  base::Result<base::ProcessOutput> run(const std::vector<std::string>& argv) const {
    return base::run_process(argv, "", &env_);
  }

  // Submits `argv` with 64 MB and one CPU; returns the job id ("" after a failed assertion).
  std::string submit(const std::string& name, const std::vector<std::string>& argv, int64_t memory_bytes = 64 << 20) {
    std::ofstream(path(name + ".sh")) << flow::batch_script(argv);
    flow::SlurmJobRequest request;
    request.job_name = "sdstack-test-" + name;
    request.partition = engine_.at("PARTITION");
    request.cpus = 1;
    request.memory_bytes = memory_bytes;
    request.time_limit_minutes = 5;
    request.work_dir = work_dir_;
    request.output_path = path(name + ".out");
    request.script_path = path(name + ".sh");
    auto submitted = run(flow::sbatch_argv(request));
    if (!submitted.is_ok()) {
      ADD_FAILURE() << submitted.status().message();
      return "";
    }
    if (submitted->exit_code != 0) {
      ADD_FAILURE() << "sbatch exited " << submitted->exit_code << ": " << submitted->err;
      return "";
    }
    auto id = flow::parse_sbatch(submitted->out);
    if (!id.is_ok()) {
      ADD_FAILURE() << id.status().message();
      return "";
    }
    job_ids_.push_back(*id);
    return *id;
  }

  SlurmJobState state(const std::string& id) const {
    auto state = flow::query_slurm_job_state(id, [this](const std::vector<std::string>& argv) { return run(argv); });
    if (!state.is_ok()) {
      ADD_FAILURE() << state.status().message();
      return {};
    }
    return *state;
  }

  // Polls until the job is in `phase` (or past it), for at most `seconds`.
  SlurmJobState wait_for(const std::string& id, Phase phase, double seconds = 25) const {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    SlurmJobState job;
    while (Clock::now() < deadline) {
      job = state(id);
      if (job.phase == phase || job.phase == Phase::kFinished) return job;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << "job " << id << " is still " << job.describe() << " after " << seconds << " s";
    return job;
  }

  // Waits until the job's program has created `file`: it is running and its traps are set.
  bool wait_for_file(const std::string& file, double seconds = 25) const {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline) {
      if (std::filesystem::exists(file)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << file << " did not appear within " << seconds << " s";
    return false;
  }

 private:
  const testing::Engine& engine_;
  std::vector<std::string> env_;
  std::string work_dir_;
  std::vector<std::string> job_ids_;
};

// A program that says it started, then waits; on SIGTERM it writes "TERM" to `flag` and exits 0.
std::vector<std::string> waiting_program(const SlurmCluster& cluster) {
  return {"bash", "-c",
          "trap 'echo TERM > " + cluster.path("flag") + "; exit 0' TERM; touch " + cluster.path("started") +
              "; while true; do sleep 0.1; done"};
}

TEST(Slurm, EchoCompletesWithItsOutput) {
  SDSTACK_REQUIRE_ENGINE(engine, "slurm");
  SlurmCluster cluster(engine);
  std::string id = cluster.submit("echo", {"echo", "hello from", "slurm"});
  ASSERT_FALSE(id.empty());
  SlurmJobState job = cluster.wait_for(id, Phase::kFinished);
  EXPECT_EQ(job.state, "COMPLETED");
  EXPECT_EQ(job.cause, Cause::kNone);
  EXPECT_EQ(job.exit_code, 0);
  EXPECT_EQ(job.describe(), "completed");
  EXPECT_EQ(read_file(cluster.path("echo.out")), "hello from slurm\n");
}

TEST(Slurm, NonZeroExitIsTheJobsFailure) {
  SDSTACK_REQUIRE_ENGINE(engine, "slurm");
  SlurmCluster cluster(engine);
  std::string id = cluster.submit("exit3", {"bash", "-c", "exit 3"});
  ASSERT_FALSE(id.empty());
  SlurmJobState job = cluster.wait_for(id, Phase::kFinished);
  EXPECT_EQ(job.state, "FAILED");
  EXPECT_EQ(job.cause, Cause::kFailed);
  EXPECT_EQ(job.exit_code, 3);
  EXPECT_FALSE(job.infrastructure_failure());
  EXPECT_EQ(job.describe(), "exited with status 3 (Slurm's reason: NonZeroExitCode)");
}

TEST(Slurm, JobOverItsMemoryIsOutOfMemory) {
  SDSTACK_REQUIRE_ENGINE(engine, "slurm");
  SlurmCluster cluster(engine);
  // tail holds its one "line" (400 MB of zeros, no newline) in memory: far past the 64 MB asked for.
  std::string id = cluster.submit("oom", {"bash", "-c", "head -c 400M /dev/zero | tail > /dev/null"});
  ASSERT_FALSE(id.empty());
  SlurmJobState job = cluster.wait_for(id, Phase::kFinished);
  EXPECT_EQ(job.state, "OUT_OF_MEMORY") << job.describe() << "\n" << read_file(cluster.path("oom.out"));
  EXPECT_EQ(job.cause, Cause::kOutOfMemory);
  EXPECT_FALSE(job.infrastructure_failure());
  EXPECT_EQ(job.describe(), "out of memory: the job used more than its --mem; ask for more memory");
}

TEST(Slurm, GracefulStopSendsTermFirst) {
  SDSTACK_REQUIRE_ENGINE(engine, "slurm");
  SlurmCluster cluster(engine);
  std::string id = cluster.submit("stop", waiting_program(cluster));
  ASSERT_FALSE(id.empty());
  ASSERT_TRUE(cluster.wait_for_file(cluster.path("started")));
  EXPECT_EQ(cluster.state(id).phase, Phase::kRunning);
  auto cancelled = cluster.run(flow::scancel_argv(id, false));
  ASSERT_TRUE(cancelled.is_ok()) << cancelled.status().message();
  ASSERT_EQ(cancelled->exit_code, 0) << cancelled->err;
  SlurmJobState job = cluster.wait_for(id, Phase::kFinished);
  EXPECT_EQ(job.state, "CANCELLED");
  EXPECT_EQ(job.cause, Cause::kCancelled);
  EXPECT_FALSE(job.infrastructure_failure());
  EXPECT_EQ(read_file(cluster.path("flag")), "TERM\n") << "the program's TERM trap did not run";
}

TEST(Slurm, AbortKillsWithoutTerm) {
  SDSTACK_REQUIRE_ENGINE(engine, "slurm");
  SlurmCluster cluster(engine);
  std::string id = cluster.submit("abort", waiting_program(cluster));
  ASSERT_FALSE(id.empty());
  ASSERT_TRUE(cluster.wait_for_file(cluster.path("started")));
  auto start = Clock::now();
  auto killed = cluster.run(flow::scancel_argv(id, true));
  ASSERT_TRUE(killed.is_ok()) << killed.status().message();
  ASSERT_EQ(killed->exit_code, 0) << killed->err;
  SlurmJobState job = cluster.wait_for(id, Phase::kFinished);
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_LT(seconds, 8.0) << "an abort waited like a graceful stop (KillWait is 10 s)";
  EXPECT_EQ(job.cause, Cause::kFailed) << job.describe();
  EXPECT_EQ(job.signal, 9) << job.describe();
  EXPECT_FALSE(std::filesystem::exists(cluster.path("flag"))) << "the program got SIGTERM on abort";
}

TEST(Slurm, AbortCancelsAPendingJob) {
  SDSTACK_REQUIRE_ENGINE(engine, "slurm");
  SlurmCluster cluster(engine);
  // A first job holds all of the node's memory, so the second one waits (sbatch refuses outright a
  // request no node could ever hold, so a pending job needs a busy node).
  int64_t node_memory = std::stoll(engine.at("NODE_MEMORY_MB")) << 20;
  std::string holder = cluster.submit("holder", waiting_program(cluster), node_memory);
  ASSERT_FALSE(holder.empty());
  ASSERT_TRUE(cluster.wait_for_file(cluster.path("started")));
  std::string waiting = cluster.submit("waiting", {"true"});
  ASSERT_FALSE(waiting.empty());
  SlurmJobState pending = cluster.state(waiting);
  EXPECT_EQ(pending.phase, Phase::kPending) << pending.describe();
  auto killed = cluster.run(flow::scancel_argv(waiting, true));
  ASSERT_TRUE(killed.is_ok()) << killed.status().message();
  SlurmJobState job = cluster.wait_for(waiting, Phase::kFinished, 10);
  EXPECT_EQ(job.cause, Cause::kCancelled) << job.describe();
}

TEST(Slurm, SinfoDescribesTheNode) {
  SDSTACK_REQUIRE_ENGINE(engine, "slurm");
  SlurmCluster cluster(engine);
  auto listed = cluster.run(flow::sinfo_argv());
  ASSERT_TRUE(listed.is_ok()) << listed.status().message();
  ASSERT_EQ(listed->exit_code, 0) << listed->err;
  auto partitions = flow::parse_sinfo(listed->out);
  ASSERT_TRUE(partitions.is_ok()) << partitions.status().message();
  ASSERT_EQ(partitions->size(), 1u) << listed->out;
  const flow::SlurmPartition& partition = (*partitions)[0];
  EXPECT_EQ(partition.name, engine.at("PARTITION"));
  EXPECT_TRUE(partition.is_default);
  EXPECT_EQ(partition.state, "up");
  EXPECT_EQ(partition.nodes, 1);
  EXPECT_EQ(partition.cpus_per_node, std::stoi(engine.at("NODE_CPUS")));
  EXPECT_EQ(partition.memory_bytes_per_node, std::stoll(engine.at("NODE_MEMORY_MB")) << 20);
  EXPECT_EQ(partition.gpus_per_node, 0);
  EXPECT_EQ(partition.time_limit_minutes, 0);
}

}  // namespace
}  // namespace sdstack

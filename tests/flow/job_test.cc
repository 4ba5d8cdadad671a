// Jobs: real bash jobs, sandboxed and not: output capture, crashes, floods, leftovers, stop/abort,
// and the sandbox's read-only world.
#include "flow/job.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "base/file.h"
#include "base/strings.h"
#include "testing/testing.h"

namespace sdstack::flow {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A word no other process on the machine has in its command line: `sleep 1000.<marker>` marks the
// processes a job leaves behind, so the test can look for them in /proc afterwards.
std::string unique_marker() {
  static int counter = 0;
  return std::to_string(getpid()) + std::to_string(++counter);
}

// Whether a live (not zombie) process runs `sleep 1000.<marker>`.
bool sleeper_alive(const std::string& marker) {
  const std::string wanted = std::string("sleep") + '\0' + "1000." + marker;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename().string();
    if (name[0] < '1' || name[0] > '9') continue;
    std::ifstream cmdline(entry.path() / "cmdline", std::ios::binary);
    std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    if (args.find(wanted) == std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    std::getline(stat, line);
    size_t paren = line.rfind(')');
    if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z') continue;
    return true;
  }
  return false;
}

// True once no `sleep 1000.<marker>` lives (given a moment for SIGKILLed processes to go).
// Generous waits: on a loaded machine a background `sleep` may exec after the job says "ready",
// and die a while after its namespace does.
bool sleeper_gone(const std::string& marker) {
  for (int attempt = 0; attempt < 250; ++attempt) {
    if (!sleeper_alive(marker)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

bool sleeper_appears(const std::string& marker) {
  for (int attempt = 0; attempt < 250; ++attempt) {
    if (sleeper_alive(marker)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

struct Finished {
  JobResult result;
  std::vector<LogLine> lines;
  double seconds = 0;  // from start (or from the request, for stop/abort) to the end of wait()
};

// Runs each test once sandboxed (skipped, with check_sandbox()'s reason, where bwrap can't work)
// and once directly.
class JobTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      base::Status usable = check_sandbox();
      if (!usable.is_ok()) GTEST_SKIP() << usable.message();
    }
    std::filesystem::create_directories(work_dir());
    std::filesystem::create_directories(home_dir());
  }

  std::string work_dir() const { return root_.file("work"); }
  std::string home_dir() const { return root_.file("home"); }
  std::string log_path() const { return root_.file("log"); }

  JobSpec spec_for(const std::string& script) const {
    JobSpec spec;
    spec.argv = {"bash", "-e", "-o", "pipefail", "-c", script};
    spec.work_dir = work_dir();
    spec.writable_dirs = {home_dir()};
    const char* path = std::getenv("PATH");
    spec.env = {std::string("PATH=") + (path != nullptr ? path : "/usr/bin:/bin"), "HOME=" + home_dir()};
    spec.sandbox = GetParam();
    return spec;
  }

  // Runs the job to its end.
  Finished run(const JobSpec& spec) {
    Finished finished;
    auto log = LogWriter::open(log_path());
    EXPECT_TRUE(log.is_ok()) << log.status().message();
    if (!log.is_ok()) return finished;
    auto start = Clock::now();
    auto job = Job::start(spec, log->get());
    EXPECT_TRUE(job.is_ok()) << job.status().message();
    if (!job.is_ok()) return finished;
    auto result = (*job)->wait();
    finished.seconds = seconds_since(start);
    EXPECT_TRUE(result.is_ok()) << result.status().message();
    if (result.is_ok()) finished.result = *result;
    finished.lines = read_lines();
    return finished;
  }

  // Starts the job, waits for `ready_text` on its stdout, then calls `act` on it (request_stop or
  // request_abort); `seconds` is measured from then to the end of wait().
  Finished run_and_interrupt(const JobSpec& spec, const std::string& ready_text, void (Job::*act)()) {
    Finished finished;
    auto log = LogWriter::open(log_path());
    EXPECT_TRUE(log.is_ok()) << log.status().message();
    if (!log.is_ok()) return finished;
    auto job = Job::start(spec, log->get());
    EXPECT_TRUE(job.is_ok()) << job.status().message();
    if (!job.is_ok()) return finished;
    std::optional<base::Result<JobResult>> result;
    Clock::time_point ended;
    std::thread waiter([&] {
      result = (*job)->wait();
      ended = Clock::now();
    });
    bool ready = false;
    for (auto deadline = Clock::now() + std::chrono::seconds(10); !ready && Clock::now() < deadline;) {
      for (const LogLine& line : read_lines())
        ready = ready || (line.stream == LogStream::kOut && line.text == ready_text);
      if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(ready) << "'" << ready_text << "' never appeared in the log";
    auto asked = Clock::now();
    ((**job).*act)();
    waiter.join();
    finished.seconds = std::chrono::duration<double>(ended - asked).count();
    EXPECT_TRUE(result->is_ok()) << result->status().message();
    if (result->is_ok()) finished.result = **result;
    finished.lines = read_lines();
    return finished;
  }

  std::vector<LogLine> read_lines() const {
    auto lines = read_log(log_path());
    return lines.is_ok() ? *lines : std::vector<LogLine>();
  }

  static std::vector<std::string> texts(const Finished& finished, LogStream stream) {
    std::vector<std::string> found;
    for (const LogLine& line : finished.lines) {
      if (line.stream == stream) found.push_back(line.text);
    }
    return found;
  }

  static bool has_line(const Finished& finished, LogStream stream, const std::string& text) {
    for (const std::string& line : texts(finished, stream)) {
      if (line.find(text) != std::string::npos) return true;
    }
    return false;
  }

  testing::TempDir root_;
};

TEST_P(JobTest, CapturesStdoutAndStderrOnTheirStreams) {
  Finished finished = run(spec_for("echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'no newline'"));
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{"out1", "out2", "no newline"}));
  EXPECT_EQ(texts(finished, LogStream::kErr), (std::vector<std::string>{"err1", "err2"}));
  EXPECT_EQ(finished.result.exit_code, 0);
  EXPECT_EQ(finished.result.term_signal, 0);
  EXPECT_FALSE(finished.result.stopped);
  EXPECT_FALSE(finished.result.aborted);
  EXPECT_EQ(finished.result.log_error, "");
}

TEST_P(JobTest, ExitCodeAndWorkingDirectory) {
  JobSpec spec = spec_for("pwd; echo \"$HOME\"; false; echo never");
  Finished finished = run(spec);
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{work_dir(), home_dir()}));
  EXPECT_EQ(finished.result.exit_code, 1);
  EXPECT_EQ(finished.result.term_signal, 0);
  EXPECT_EQ(run(spec_for("exit 42")).result.exit_code, 42);
}

TEST_P(JobTest, CrashKeepsEveryLineBeforeIt) {
  Finished finished =
      run(spec_for("ulimit -c 0; for i in $(seq 1 100); do echo line $i; done; "
                   "echo last words >&2; printf 'half a line'; kill -SEGV $$"));
  std::vector<std::string> expected;
  for (int i = 1; i <= 100; ++i) expected.push_back("line " + std::to_string(i));
  expected.push_back("half a line");
  EXPECT_EQ(texts(finished, LogStream::kOut), expected);
  EXPECT_EQ(texts(finished, LogStream::kErr), (std::vector<std::string>{"last words"}));
  EXPECT_EQ(finished.result.exit_code, 128 + SIGSEGV);
  EXPECT_EQ(finished.result.term_signal, SIGSEGV);
}

TEST_P(JobTest, FloodOfLinesIsNotLost) {
  Finished finished = run(spec_for("seq 1 200000; seq 1 5000 >&2"));
  std::vector<std::string> out = texts(finished, LogStream::kOut);
  ASSERT_EQ(out.size(), 200000u);
  for (int i = 0; i < 200000; ++i) {
    ASSERT_EQ(out[i], std::to_string(i + 1)) << "line " << i;
  }
  EXPECT_EQ(texts(finished, LogStream::kErr).size(), 5000u);
  EXPECT_EQ(finished.result.exit_code, 0);
  EXPECT_LT(finished.seconds, 10.0);
}

TEST_P(JobTest, BackgroundProcessesDieWithTheMainProcess) {
  std::string marker = unique_marker();
  Finished finished = run(spec_for("sleep 1000." + marker + " & echo started"));
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{"started"}));
  EXPECT_EQ(finished.result.exit_code, 0);
  EXPECT_LT(finished.seconds, 10.0);  // not the sleep's 1000 s (bounds are loose: CI machines are busy)
  EXPECT_TRUE(sleeper_gone(marker));
}

TEST_P(JobTest, ProcessThatLeftTheGroupDoesNotHoldTheJob) {
  // setsid takes the sleep out of the job's process group and session, holding stdout open.
  std::string marker = unique_marker();
  Finished finished = run(spec_for("setsid sleep 1000." + marker +
                                   " & child=$!; "
                                   // Wait until it leads its own session (field 6 of /proc/PID/stat).
                                   "until read -r _ _ _ _ _ sid _ < /proc/$child/stat && [ $sid = $child ]; do "
                                   "sleep 0.01; done; echo $child > escaped.pid; echo started"));
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{"started"}));
  EXPECT_EQ(finished.result.exit_code, 0);
  if (GetParam()) {
    // The pid namespace dies with the job: nothing escapes it.
    EXPECT_FALSE(has_line(finished, LogStream::kSys, "stopped reading the job's output"));
    EXPECT_TRUE(sleeper_gone(marker));
  } else {
    // Without the sandbox it survives; the job stops reading after the drain limit (2 s).
    EXPECT_GE(finished.seconds, 1.9);
    EXPECT_LT(finished.seconds, 10.0);
    EXPECT_TRUE(has_line(finished, LogStream::kSys, "stopped reading the job's output"));
    auto pid = base::read_file(base::join_path(work_dir(), "escaped.pid"));
    ASSERT_TRUE(pid.is_ok());
    if (sleeper_alive(marker)) kill(std::atoi(pid->c_str()), SIGKILL);
  }
  EXPECT_TRUE(sleeper_gone(marker));
}

TEST_P(JobTest, GracefulStopLetsTheJobCleanUp) {
  std::string marker = unique_marker();
  JobSpec spec = spec_for("trap 'echo cleaning; exit 3' TERM; sleep 1000." + marker + " & echo ready; wait");
  spec.grace_seconds = 60;
  Finished finished = run_and_interrupt(spec, "ready", &Job::request_stop);
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{"ready", "cleaning"}));
  EXPECT_TRUE(has_line(finished, LogStream::kSys, "stop requested"));
  EXPECT_EQ(finished.result.exit_code, 3);
  EXPECT_EQ(finished.result.term_signal, 0);
  EXPECT_TRUE(finished.result.stopped);
  EXPECT_FALSE(finished.result.aborted);
  EXPECT_LT(finished.seconds, 30.0);  // well within the grace: the trap ended it
  EXPECT_TRUE(sleeper_gone(marker));
}

TEST_P(JobTest, AbortKillsAtOnce) {
  std::string marker = unique_marker();
  JobSpec spec = spec_for("trap 'echo cleaning; exit 3' TERM; sleep 1000." + marker + " & echo ready; wait");
  spec.grace_seconds = 60;
  Finished finished = run_and_interrupt(spec, "ready", &Job::request_abort);
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{"ready"}));  // no "cleaning"
  EXPECT_TRUE(has_line(finished, LogStream::kSys, "abort requested"));
  EXPECT_EQ(finished.result.exit_code, 128 + SIGKILL);
  EXPECT_EQ(finished.result.term_signal, SIGKILL);
  EXPECT_TRUE(finished.result.aborted);
  EXPECT_FALSE(finished.result.stopped);
  EXPECT_LT(finished.seconds, 30.0);  // at once, not after the 60 s grace
  EXPECT_TRUE(sleeper_gone(marker));
}

TEST_P(JobTest, JobIgnoringSigtermIsKilledAfterTheGrace) {
  std::string marker = unique_marker();
  // `trap '' TERM` makes bash and the sleep it starts ignore SIGTERM.
  JobSpec spec = spec_for("trap '' TERM; echo ready; sleep 1000." + marker + "; echo never");
  spec.grace_seconds = 1;
  Finished finished = run_and_interrupt(spec, "ready", &Job::request_stop);
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{"ready"}));
  EXPECT_TRUE(has_line(finished, LogStream::kSys, "sending SIGKILL"));
  EXPECT_EQ(finished.result.exit_code, 128 + SIGKILL);
  EXPECT_EQ(finished.result.term_signal, SIGKILL);
  EXPECT_TRUE(finished.result.stopped);
  EXPECT_GE(finished.seconds, 0.9);
  EXPECT_LT(finished.seconds, 10.0);
  EXPECT_TRUE(sleeper_gone(marker));
}

TEST_P(JobTest, StopAskedBeforeWaitIsActedOn) {
  // The supervisor may get its SIGTERM between start() and wait(), even before bwrap has started
  // the command.
  std::string marker = unique_marker();
  auto log = LogWriter::open(log_path());
  ASSERT_TRUE(log.is_ok());
  auto job = Job::start(spec_for("sleep 1000." + marker), log->get());
  ASSERT_TRUE(job.is_ok()) << job.status().message();
  (*job)->request_stop();
  auto start = Clock::now();
  auto result = (*job)->wait();
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_TRUE(result->stopped);
  EXPECT_EQ(result->term_signal, SIGTERM);
  EXPECT_LT(seconds_since(start), 5.0);
  EXPECT_TRUE(sleeper_gone(marker));
}

TEST_P(JobTest, TmpIsPrivateOnlyInTheSandbox) {
  // A file in the host's /tmp, and one the job makes in its /tmp.
  const std::string host_file = "/tmp/sdstack-job-test-host-" + unique_marker();
  const std::string job_file = "/tmp/sdstack-job-test-job-" + unique_marker();
  testing::write_text_file(host_file, "host");
  Finished finished = run(spec_for("test -e " + host_file +
                                   " && echo host-tmp-seen || echo host-tmp-hidden; "
                                   "echo job > " +
                                   job_file + " && cat " + job_file));
  const bool sandboxed = GetParam();
  EXPECT_EQ(texts(finished, LogStream::kOut),
            (std::vector<std::string>{sandboxed ? "host-tmp-hidden" : "host-tmp-seen", "job"}));
  EXPECT_EQ(base::file_exists(job_file), !sandboxed);
  std::filesystem::remove(host_file);
  std::filesystem::remove(job_file);
}

std::string mode_name(const ::testing::TestParamInfo<bool>& sandboxed) {
  return sandboxed.param ? "Sandboxed" : "Direct";
}

INSTANTIATE_TEST_SUITE_P(Job, JobTest, ::testing::Values(true, false), mode_name);

// The sandbox's own promises.
class JobSandboxTest : public JobTest {};

TEST_P(JobSandboxTest, WritesOutsideTheWritablePlacesFail) {
  // A place the host can write, outside the job's writable dirs and not under /tmp (in the sandbox
  // /tmp is a tmpfs where any path can be written).
  std::string host_dir = std::filesystem::current_path().string();
  if (base::is_directory("/var/tmp") && access("/var/tmp", W_OK) == 0) host_dir = "/var/tmp";
  const std::string outside = host_dir + "/sdstack-job-test-outside-" + unique_marker();
  Finished finished = run(spec_for("echo x > " + outside + "; echo never"));
  EXPECT_FALSE(base::file_exists(outside));
  std::filesystem::remove(outside);
  EXPECT_NE(finished.result.exit_code, 0);
  EXPECT_EQ(texts(finished, LogStream::kOut), std::vector<std::string>{});
  EXPECT_TRUE(has_line(finished, LogStream::kErr, "Read-only file system"))
      << ::testing::PrintToString(texts(finished, LogStream::kErr));
}

TEST_P(JobSandboxTest, WorkDirHomeTmpAndShmAreWritable) {
  Finished finished =
      run(spec_for("echo w > work.txt; echo h > \"$HOME/home.txt\"; echo t > /tmp/t.txt; "
                   "echo s > /dev/shm/s.txt; cat /tmp/t.txt /dev/shm/s.txt; echo $$"));
  EXPECT_EQ(finished.result.exit_code, 0) << ::testing::PrintToString(texts(finished, LogStream::kErr));
  // The job is pid 2 of its own pid namespace (bwrap's init is 1).
  EXPECT_EQ(texts(finished, LogStream::kOut), (std::vector<std::string>{"t", "s", "2"}));
  EXPECT_TRUE(base::file_exists(base::join_path(work_dir(), "work.txt")));
  EXPECT_TRUE(base::file_exists(base::join_path(home_dir(), "home.txt")));
}

TEST_P(JobSandboxTest, ReadOnlyDirsUnderTmpStayVisibleButReadOnly) {
  testing::TempDir program_dir;  // under /tmp, which the sandbox replaces with its own
  testing::write_text_file(program_dir.file("tool.txt"), "the tool\n");
  JobSpec spec = spec_for("cat " + program_dir.file("tool.txt") + "; echo x > " + program_dir.file("new.txt"));
  spec.readonly_dirs = {program_dir.path()};
  Finished finished = run(spec);
  EXPECT_EQ(texts(finished, LogStream::kOut), std::vector<std::string>{"the tool"});
  EXPECT_TRUE(has_line(finished, LogStream::kErr, "Read-only file system"));
  EXPECT_FALSE(base::file_exists(program_dir.file("new.txt")));
}

TEST_P(JobSandboxTest, ShmSizeIsApplied) {
  JobSpec spec = spec_for("df -k --output=size /dev/shm | tail -1 | tr -d ' '");
  spec.shm_size_bytes = 8 << 20;
  Finished finished = run(spec);
  EXPECT_EQ(texts(finished, LogStream::kOut), std::vector<std::string>{"8192"});
}

TEST_P(JobSandboxTest, KillingTheSupervisorKillsTheJob) {
  // A child process plays the supervisor: it starts the job and pumps its log until it is killed.
  std::string marker = unique_marker();
  JobSpec spec = spec_for("sleep 1000." + marker + " & echo ready; wait");
  pid_t supervisor = fork();
  ASSERT_GE(supervisor, 0);
  if (supervisor == 0) {
    auto log = LogWriter::open(log_path());
    if (!log.is_ok()) _exit(1);
    auto job = Job::start(spec, log->get());
    if (!job.is_ok()) _exit(2);
    (void)(*job)->wait();
    _exit(3);
  }
  bool ready = false;
  for (auto deadline = Clock::now() + std::chrono::seconds(10); !ready && Clock::now() < deadline;) {
    for (const LogLine& line : read_lines()) ready = ready || line.text == "ready";
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(ready);
  EXPECT_TRUE(sleeper_appears(marker));
  kill(supervisor, SIGKILL);
  int status = 0;
  waitpid(supervisor, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_TRUE(sleeper_gone(marker));
}

INSTANTIATE_TEST_SUITE_P(Job, JobSandboxTest, ::testing::Values(true), mode_name);

TEST(JobStartTest, RefusesAMissingWorkDirOrProgram) {
  testing::TempDir root;
  auto log = LogWriter::open(root.file("log"));
  ASSERT_TRUE(log.is_ok());
  JobSpec spec;
  spec.argv = {"true"};
  spec.work_dir = root.file("missing");
  spec.sandbox = false;
  auto missing_dir = Job::start(spec, log->get());
  ASSERT_FALSE(missing_dir.is_ok());
  EXPECT_EQ(missing_dir.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_NE(missing_dir.status().message().find(root.file("missing")), std::string::npos);

  spec.work_dir = root.path();
  spec.argv = {"sdstack-no-such-program"};
  spec.env = {"PATH=/usr/bin:/bin"};
  auto missing_program = Job::start(spec, log->get());
  ASSERT_FALSE(missing_program.is_ok());
  EXPECT_EQ(missing_program.status().code(), base::StatusCode::kNotFound);
}

TEST(JobStartTest, SandboxCommandLine) {
  JobSpec spec;
  spec.argv = {"bash", "-c", "echo hi"};
  spec.work_dir = "/data/run/work";
  spec.writable_dirs = {"/data/run/home/", "/data/run"};
  spec.readonly_dirs = {"/tmp/build"};
  spec.shm_size_bytes = 1 << 30;
  std::vector<std::string> args = sandbox_argv(spec, "/usr/bin/bwrap");
  std::string line = base::join(args, " ");
  EXPECT_EQ(line.rfind("/usr/bin/bwrap --ro-bind / / --dev /dev ", 0), 0u) << line;
  EXPECT_NE(line.find(" --proc /proc --tmpfs /tmp --size 1073741824 --tmpfs /dev/shm "
                      "--ro-bind /tmp/build /tmp/build --bind /data/run /data/run --bind /data/run/home /data/run/home "
                      "--bind /data/run/work /data/run/work --chdir /data/run/work "
                      "--unshare-pid --die-with-parent -- bash -c echo hi"),
            std::string::npos)
      << line;
  EXPECT_EQ(line.find("--unshare-net"), std::string::npos);  // jobs keep the network
}

}  // namespace
}  // namespace sdstack::flow

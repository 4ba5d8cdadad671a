// base/subprocess: real children: captured output, big outputs, exit codes, signals, lookup errors.
#include "base/subprocess.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testing/testing.h"

namespace sdstack::base {
namespace {

TEST(SubprocessTest, CapturesStdoutAndStderrSeparately) {
  auto output = run_process({"sh", "-c", "echo to-out; echo to-err >&2; echo more-out"});
  ASSERT_TRUE(output.is_ok()) << output.status().message();
  EXPECT_EQ(output->exit_code, 0);
  EXPECT_EQ(output->out, "to-out\nmore-out\n");
  EXPECT_EQ(output->err, "to-err\n");
}

TEST(SubprocessTest, BigOutputOnBothStreamsDoesNotDeadlock) {
  // 5 MB on each stream: far beyond a pipe's 64 KiB, so reading one stream to its end before the
  // other would block the child on the full second pipe.
  auto output = run_process({"sh", "-c",
                             "head -c 5000000 /dev/zero; head -c 5000000 /dev/zero >&2; "
                             "head -c 1000 /dev/zero"});
  ASSERT_TRUE(output.is_ok()) << output.status().message();
  EXPECT_EQ(output->out.size(), 5001000u);
  EXPECT_EQ(output->err.size(), 5000000u);
}

TEST(SubprocessTest, ExitCodeAndSignalAs128PlusN) {
  auto exited = run_process({"sh", "-c", "exit 7"});
  ASSERT_TRUE(exited.is_ok());
  EXPECT_EQ(exited->exit_code, 7);
  auto killed = run_process({"sh", "-c", "echo before; kill -TERM $$; echo after"});
  ASSERT_TRUE(killed.is_ok());
  EXPECT_EQ(killed->exit_code, 128 + SIGTERM);
  EXPECT_EQ(killed->out, "before\n");
}

TEST(SubprocessTest, UnknownProgramIsNotFoundNamingIt) {
  auto output = run_process({"sdstack-no-such-program", "--flag"});
  ASSERT_FALSE(output.is_ok());
  EXPECT_EQ(output.status().code(), StatusCode::kNotFound);
  EXPECT_NE(output.status().message().find("'sdstack-no-such-program' not found on PATH"), std::string::npos)
      << output.status().message();
  EXPECT_EQ(find_program("sdstack-no-such-program").status().code(), StatusCode::kNotFound);
}

TEST(SubprocessTest, FindProgramSearchesPath) {
  auto sh = find_program("sh");
  ASSERT_TRUE(sh.is_ok()) << sh.status().message();
  EXPECT_EQ(sh->front(), '/');
  EXPECT_EQ(sh->substr(sh->size() - 3), "/sh");
}

TEST(SubprocessTest, CwdEnvAndStdin) {
  testing::TempDir dir;
  std::vector<std::string> env = {"PATH=/usr/bin:/bin", "GREETING=hello there"};
  auto output =
      run_process({"sh", "-c", "pwd; echo \"$GREETING\"; echo \"${HOME:-no home}\"; cat; echo end"}, dir.path(), &env);
  ASSERT_TRUE(output.is_ok()) << output.status().message();
  EXPECT_EQ(output->out, dir.path() + "\nhello there\nno home\nend\n");  // stdin is /dev/null: cat ends at once

  auto missing = run_process({"true"}, dir.file("no-such-dir"));
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kIoError);
  EXPECT_NE(missing.status().message().find("no-such-dir"), std::string::npos) << missing.status().message();
}

TEST(SubprocessTest, ChildStartsWithDefaultSignalsWhateverTheParentDid) {
  // A parent that ignores SIGPIPE and blocks SIGTERM (as a supervisor might) must not pass that on.
  struct sigaction ignore {
  }, previous_pipe{};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ignore, &previous_pipe);
  sigset_t term, previous_mask;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &previous_mask);
  // /proc/self/status shows the child's ignored (SigIgn) and blocked (SigBlk) signal masks.
  auto output = run_process({"grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"});
  pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);
  sigaction(SIGPIPE, &previous_pipe, nullptr);
  ASSERT_TRUE(output.is_ok()) << output.status().message();
  EXPECT_EQ(output->out, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
}

TEST(SubprocessTest, SpawnedProcessCanLeadItsOwnSession) {
  SpawnOptions options;
  options.argv = {"sh", "-c", "cat /proc/self/stat"};
  options.new_session = true;
  auto child = spawn_process(options);
  ASSERT_TRUE(child.is_ok()) << child.status().message();
  std::string stat;
  char buffer[4096];
  for (;;) {
    ssize_t n = read(child->stdout_fd.get(), buffer, sizeof buffer);
    if (n > 0) stat.append(buffer, static_cast<size_t>(n));
    if (n == 0) break;
    if (n < 0) usleep(1000);  // non-blocking
  }
  int status = 0;
  ASSERT_EQ(waitpid(child->pid, &status, 0), child->pid);
  EXPECT_EQ(exit_code_from_wait_status(status), 0);
  // "pid (cat) S ppid pgrp session ...": cat's group and session are those sh led.
  int pid = 0, parent = 0, group = 0, session = 0;
  char state = 0;
  ASSERT_EQ(sscanf(stat.c_str(), "%d (cat) %c %d %d %d", &pid, &state, &parent, &group, &session), 5) << stat;
  EXPECT_EQ(group, child->pid);
  EXPECT_EQ(session, child->pid);
}

}  // namespace
}  // namespace sdstack::base

// The runner end to end: `sdstack init/run/ps/logs/stop/rm/tags/artifacts/secrets` on real git
// projects, with the store in a temporary SDSTACK_HOME.
#include <curl/curl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "base/file.h"
#include "base/subprocess.h"
#include "testing/project.h"
#include "testing/testing.h"

extern char** environ;

namespace sdstack {
namespace {

using testing::CommandResult;
using testing::TempDir;
using testing::write_text_file;
using testing::contains;


// A git project with workflow files and its own sdstack store.
class RunnerTest : public testing::ProjectTest {};

TEST_F(RunnerTest, RunNeedsInitAndInitNeedsNoRemote) {
  write_workflows("workflows:\n  - name: hello\n    commands:\n      - echo hi\n");
  CommandResult before = sd({"run", "hello"});
  EXPECT_EQ(before.exit_code, 1);
  EXPECT_TRUE(contains(before.err, "is not initialized: run `sdstack init` in it first")) << before.err;
  CommandResult init = sd({"init"});
  EXPECT_EQ(init.exit_code, 0) << init.err;
  EXPECT_TRUE(contains(init.out, "no remote")) << init.out;
  EXPECT_TRUE(contains(init.out, "1 workflow: hello")) << init.out;
}

TEST_F(RunnerTest, AttachedRunShowsOutputAndRecordsDone) {
  write_workflows(
      "workflows:\n"
      "  - name: hello\n"
      "    commands:\n"
      "      - echo to-stdout\n"
      "      - echo to-stderr >&2\n"
      "      - echo \"run $SDSTACK_RUN in $(basename $PWD)\"\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult run = sd({"run", "hello"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(contains(run.out, "to-stdout\n")) << run.out;
  EXPECT_TRUE(contains(run.err, "to-stderr\n")) << run.err;
  EXPECT_TRUE(contains(run.out, " in work\n")) << run.out;
  CommandResult ps = sd({"ps", "-a"});
  EXPECT_TRUE(contains(ps.out, "hello")) << ps.out;
  EXPECT_TRUE(contains(ps.out, "done")) << ps.out;
}

TEST_F(RunnerTest, BashStopsAtTheFirstFailingCommand) {
  write_workflows(
      "workflows:\n  - name: fails\n    commands:\n      - echo one\n      - exit 7\n      - echo never\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult run = sd({"run", "fails"});
  EXPECT_EQ(run.exit_code, 7);
  EXPECT_TRUE(contains(run.out, "one"));
  EXPECT_FALSE(contains(run.out, "never"));
  EXPECT_TRUE(contains(sd({"ps", "-a"}).out, "exit code 7"));
}

TEST_F(RunnerTest, RunArgsArriveWithQuotesSpacesAndDollars) {
  write_workflows(
      "workflows:\n"
      "  - name: args\n"
      "    commands:\n"
      "      - printf '[%s]\\n' ${{ run.args }} > args.txt\n"
      "    artifacts:\n"
      "      - path: args.txt\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult run = sd({"run", "args", "-P", "cats in hats", "it's \"great\"", "$HOME ${PATH} $(id)", "--", "-d"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  CommandResult ps = sd({"ps"});
  std::string name = ps.out.substr(ps.out.find('\n') + 1);
  name = name.substr(0, name.find(' '));
  TempDir download;
  ASSERT_EQ(sd({"artifacts", "download", name, "--to", download.path()}).exit_code, 0);
  EXPECT_EQ(*base::read_file(download.file("args.txt")),
            "[-P]\n[cats in hats]\n[it's \"great\"]\n[$HOME ${PATH} $(id)]\n[-d]\n");
}

TEST_F(RunnerTest, DepsByWorkflowAndByTag) {
  write_workflows(
      "workflows:\n"
      "  - name: make-data\n"
      "    commands:\n"
      "      - mkdir -p data && echo \"v$VERSION\" > data/x.txt && ln -s x.txt data/link\n"
      "    env:\n      - VERSION=1\n"
      "    artifacts:\n      - path: ./data\n"
      "  - name: use-data\n"
      "    deps:\n      - workflow: make-data\n"
      "    commands:\n      - cat data/link\n"
      "  - name: use-tag\n"
      "    deps:\n      - tag: golden-data\n"
      "    commands:\n      - cat data/x.txt\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult missing = sd({"run", "use-data"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(contains(missing.err, "workflow 'use-data' needs the artifacts of workflow 'make-data', which has no "
                                    "successful run yet: run `sdstack run make-data` first"))
      << missing.err;
  CommandResult no_tag = sd({"run", "use-tag"});
  EXPECT_TRUE(contains(no_tag.err, "needs the artifacts of tag 'golden-data', which does not exist")) << no_tag.err;

  ASSERT_EQ(sd({"run", "-t", "golden-data", "make-data", "-e", "VERSION=2"}).exit_code, 0);
  ASSERT_EQ(sd({"run", "make-data"}).exit_code, 0);  // the latest: VERSION=1
  CommandResult by_workflow = sd({"run", "use-data"});
  EXPECT_EQ(by_workflow.exit_code, 0) << by_workflow.err;
  EXPECT_TRUE(contains(by_workflow.out, "v1\n")) << by_workflow.out;
  CommandResult by_tag = sd({"run", "use-tag"});
  EXPECT_EQ(by_tag.exit_code, 0) << by_tag.err;
  EXPECT_TRUE(contains(by_tag.out, "v2\n")) << by_tag.out;
  EXPECT_TRUE(contains(sd({"tags", "list"}).out, "golden-data")) << sd({"tags", "list"}).out;
}

TEST_F(RunnerTest, ArtifactsKeepSymlinksAndUploadsCanBeTagged) {
  write_workflows(
      "workflows:\n"
      "  - name: tree\n"
      "    commands:\n"
      "      - mkdir -p out/sub && echo a > out/sub/a.txt && ln -s sub/a.txt out/link && ln -s /nonexistent out/dangling\n"
      "    artifacts:\n      - path: out\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string run = detached({"tree"});
  ASSERT_TRUE(wait_for([&] { return finished(run); }));
  CommandResult list = sd({"artifacts", "list", run});
  EXPECT_TRUE(contains(list.out, "out/link -> sub/a.txt")) << list.out;
  EXPECT_TRUE(contains(list.out, "out/dangling -> /nonexistent")) << list.out;
  TempDir download;
  ASSERT_EQ(sd({"artifacts", "download", run, "--to", download.path()}).exit_code, 0);
  EXPECT_EQ(std::filesystem::read_symlink(download.file("out/link")).string(), "sub/a.txt");
  EXPECT_EQ(*base::read_file(download.file("out/link")), "a\n");

  write_text_file(project_.file("local/weights.bin"), "weights");
  CommandResult upload = sd({"tags", "add", "uploaded", "-a", "local"});
  ASSERT_EQ(upload.exit_code, 0) << upload.err;
  TempDir from_tag;
  ASSERT_EQ(sd({"artifacts", "download", ":uploaded", "--to", from_tag.path()}).exit_code, 0);
  EXPECT_EQ(*base::read_file(from_tag.file("local/weights.bin")), "weights");
}

TEST_F(RunnerTest, LogsOfACrashedRunKeepEveryLine) {
  write_workflows(
      "workflows:\n"
      "  - name: crash\n"
      "    commands:\n"
      "      - for i in $(seq 1 2000); do echo line-$i; done; printf 'no newline'; kill -SEGV $$\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string run = detached({"crash"});
  ASSERT_TRUE(wait_for([&] { return finished(run); }));
  EXPECT_EQ(status_of(run), "failed");
  EXPECT_TRUE(contains(sd({"ps", "-a"}).out, "killed by signal 11"));
  CommandResult log = sd({"logs", run});
  for (int i : {1, 1000, 2000}) EXPECT_TRUE(contains(log.out, "line-" + std::to_string(i) + "\n")) << i;
  EXPECT_TRUE(contains(log.out, "no newline\n"));
  CommandResult timestamps = sd({"logs", "-T", run});
  EXPECT_TRUE(contains(timestamps.out, "Z line-2000\n")) << timestamps.out.substr(0, 200);
}

const char* kStoppable =
    "workflows:\n"
    "  - name: long\n"
    "    commands:\n"
    "      - trap 'echo cleaning; echo partial > out/result.txt; exit 3' TERM; mkdir -p out; echo ready; sleep 300 & wait\n"
    "    artifacts:\n      - path: out\n";

TEST_F(RunnerTest, GracefulStopSavesArtifactsAbortDoesNot) {
  write_workflows(kStoppable);
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string graceful = detached({"long"});
  std::string aborted = detached({"long"});
  ASSERT_TRUE(wait_for([&] { return contains(logs(graceful), "ready") && contains(logs(aborted), "ready"); }));
  EXPECT_EQ(status_of(graceful), "running");
  CommandResult stop = sd({"stop", graceful});
  EXPECT_EQ(stop.exit_code, 0) << stop.err;
  EXPECT_TRUE(contains(stop.out, graceful + " stopped")) << stop.out;
  EXPECT_TRUE(contains(logs(graceful), "cleaning"));
  TempDir download;
  ASSERT_EQ(sd({"artifacts", "download", graceful, "--to", download.path()}).exit_code, 0);
  EXPECT_EQ(*base::read_file(download.file("out/result.txt")), "partial\n");

  CommandResult abort = sd({"stop", "-x", aborted});
  EXPECT_EQ(abort.exit_code, 0) << abort.err;
  EXPECT_EQ(status_of(aborted), "aborted");
  EXPECT_FALSE(contains(logs(aborted), "cleaning"));
  CommandResult none = sd({"artifacts", "list", aborted});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_TRUE(contains(none.err, "has no saved artifacts")) << none.err;
  CommandResult rm = sd({"rm", "-a"});
  EXPECT_EQ(rm.exit_code, 0) << rm.err;
  EXPECT_EQ(status_of(graceful), "");
}

TEST_F(RunnerTest, CtrlCStopsAnAttachedRunAndASecondAborts) {
  write_workflows(
      "workflows:\n"
      "  - name: stubborn\n"
      "    commands:\n"
      "      - trap 'echo got-term' TERM; echo ready; while true; do sleep 0.1 || true; done\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  pid_t attached = start({"run", "--stop-grace", "60", "stubborn"});
  ASSERT_TRUE(wait_for([&] { return contains(*base::read_file(home_.file("attached.out")), "ready"); }));
  kill(attached, SIGINT);
  ASSERT_TRUE(wait_for([&] { return contains(*base::read_file(home_.file("attached.out")), "got-term"); }));
  kill(attached, SIGINT);
  int status = 0;
  ASSERT_TRUE(wait_for([&] { return waitpid(attached, &status, WNOHANG) == attached; }));
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  std::string err = *base::read_file(home_.file("attached.err"));
  EXPECT_TRUE(contains(err, "Ctrl+C again to abort")) << err;
  EXPECT_TRUE(contains(sd({"ps", "-a"}).out, "aborted"));
}

TEST_F(RunnerTest, TwoRunsAtOnce) {
  write_workflows(
      "workflows:\n"
      "  - name: slow\n"
      "    commands:\n"
      "      - sleep 1; echo \"$SDSTACK_RUN\" > who.txt\n"
      "    artifacts:\n      - path: who.txt\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string first = detached({"slow"});
  std::string second = detached({"slow"});
  EXPECT_NE(first, second);
  ASSERT_TRUE(wait_for([&] { return finished(first) && finished(second); }));
  for (const std::string& run : {first, second}) {
    EXPECT_EQ(status_of(run), "done");
    TempDir download;
    ASSERT_EQ(sd({"artifacts", "download", run, "--to", download.path()}).exit_code, 0);
    EXPECT_EQ(*base::read_file(download.file("who.txt")), run + "\n");
  }
}

TEST_F(RunnerTest, TheSandboxRefusesWritesOutsideTheRun) {
  if (!base::find_program("bwrap").is_ok()) GTEST_SKIP() << "bubblewrap is not installed";
  // Under /var/tmp: the sandbox has a private /tmp, where a write would land unseen.
  const std::string outside = "/var/tmp/sdstack-escape-" + std::to_string(getpid());
  std::filesystem::create_directories(outside);
  write_workflows(
      "workflows:\n"
      "  - name: escape\n"
      "    commands:\n"
      "      - echo inside > inside.txt\n"
      "      - echo escaped > \"$OUTSIDE/escaped.txt\"\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult sandboxed = sd({"run", "escape", "-e", "OUTSIDE=" + outside});
  EXPECT_NE(sandboxed.exit_code, 0);
  EXPECT_TRUE(contains(sandboxed.err, "Read-only file system")) << sandboxed.err;
  EXPECT_FALSE(base::file_exists(outside + "/escaped.txt"));
  CommandResult unsandboxed = sd({"run", "--no-sandbox", "escape", "-e", "OUTSIDE=" + outside});
  EXPECT_EQ(unsandboxed.exit_code, 0) << unsandboxed.err;
  EXPECT_TRUE(base::file_exists(outside + "/escaped.txt"));
  std::filesystem::remove_all(outside);
}

TEST_F(RunnerTest, SecretsReachTheRunButNotItsLogs) {
  write_workflows("workflows:\n  - name: secret\n    commands:\n      - echo \"token=$API_TOKEN\"\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  ASSERT_EQ(sd({"secrets", "add", "API_TOKEN", "s3cr3t-v4lue"}).exit_code, 0);
  EXPECT_EQ(sd({"secrets", "list"}).out, "API_TOKEN\n");
  CommandResult run = sd({"run", "secret"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_TRUE(contains(run.out, "token=***")) << run.out;
  EXPECT_FALSE(contains(run.out + run.err, "s3cr3t")) << run.out;
  EXPECT_FALSE(contains(sd({"ps", "-a"}).out, "s3cr3t"));
}

TEST_F(RunnerTest, ResourcesThisMachineLacksAreRefused) {
  write_workflows(
      "workflows:\n  - name: big\n    commands:\n      - echo ran\n    resources:\n      gpu: 1\n      memory: 64TB\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult refused = sd({"run", "big"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_TRUE(contains(refused.err, "this machine can't give what workflow 'big' asks for:")) << refused.err;
  EXPECT_TRUE(contains(refused.err, "memory 64000.0 GB")) << refused.err;
  CommandResult overridden = sd({"run", "big", "--gpu", "0", "--memory", "1GB"});
  if (std::filesystem::exists("/usr/bin/nvidia-smi")) GTEST_SKIP() << "this machine has GPUs";
  EXPECT_EQ(overridden.exit_code, 0) << overridden.err;
}

TEST_F(RunnerTest, LegacyDstackFileWithSetupWorkingDirPortsAndEnv) {
  write_text_file(project_.file("app/data.txt"), "in app\n");
  write_text_file(project_.file(".dstack/workflows.yaml"),
                  "workflows:\n"
                  "  - name: legacy\n"
                  "    working_dir: app\n"
                  "    setup:\n      - echo setting-up\n"
                  "    commands:\n"
                  "      - cat data.txt\n"
                  "      - echo \"ports $PORT_0 $PORT_1 from=$FROM_CALLER fixed=$FIXED\"\n"
                  "    ports: 2\n"
                  "    env:\n      - FIXED=1\n      - FROM_CALLER\n");
  std::filesystem::remove_all(project_.file(".sdstack"));
  git({"add", "-A"});
  git({"commit", "-q", "-m", "legacy"});
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  setenv("FROM_CALLER", "caller-value", 1);
  CommandResult run = sd({"run", "legacy"});
  unsetenv("FROM_CALLER");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(contains(run.out, "setting-up\nin app\n")) << run.out;
  EXPECT_TRUE(contains(run.out, "from=caller-value fixed=1")) << run.out;
  size_t ports = run.out.find("ports ");
  ASSERT_NE(ports, std::string::npos);
  int first = 0, second = 0;
  ASSERT_EQ(std::sscanf(run.out.c_str() + ports, "ports %d %d", &first, &second), 2) << run.out;
  EXPECT_GT(first, 0);
  EXPECT_NE(first, second);
}

TEST_F(RunnerTest, BadWorkflowFilesAndUnknownNamesAreOneClearError) {
  write_workflows("workflows:\n  - name: sd\n    comands:\n      - ls\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult bad = sd({"run", "sd"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(bad.err, "sdstack: error: .sdstack/workflows/test.yaml:3:5: unknown key 'comands' (did you mean "
                     "'commands'?)\n");
  write_workflows("workflows:\n  - name: prompt-stable\n    commands:\n      - ls\n");
  CommandResult unknown = sd({"run", "prompt-stabel"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_TRUE(contains(unknown.err, "no workflow 'prompt-stabel'")) << unknown.err;
  EXPECT_TRUE(contains(unknown.err, "(did you mean 'prompt-stable'?)")) << unknown.err;
  CommandResult no_run = sd({"logs", "wet-fox-99"});
  EXPECT_EQ(no_run.exit_code, 1);
  EXPECT_TRUE(contains(no_run.err, "no run 'wet-fox-99'")) << no_run.err;
}

TEST_F(RunnerTest, LogsFollowARunToItsEnd) {
  write_workflows(
      "workflows:\n  - name: ticks\n    commands:\n      - for i in 1 2 3 4 5; do echo tick-$i; sleep 0.2; done\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string run = detached({"ticks"});
  CommandResult follow = sd({"logs", "-f", run});
  EXPECT_EQ(follow.exit_code, 0);
  EXPECT_TRUE(contains(follow.out, "tick-1\ntick-2\ntick-3\ntick-4\ntick-5\n")) << follow.out;
  EXPECT_TRUE(contains(follow.err, "sdstack: done")) << follow.err;
  EXPECT_EQ(status_of(run), "done");
}

TEST_F(RunnerTest, ProvidersSayWhatTheyNeed) {
  write_workflows(
      "workflows:\n"
      "  - name: container\n    provider: docker\n    image: debian:12\n    commands:\n      - echo hi\n"
      "  - name: lab\n    provider: lab\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  if (!base::find_program("podman").is_ok()) {
    CommandResult docker = sd({"run", "container"});
    EXPECT_EQ(docker.exit_code, 1);
    EXPECT_TRUE(contains(docker.err, "the docker provider runs its image with podman, which is not installed "
                                     "(apt-get install podman)"))
        << docker.err;
  }
  if (!base::find_program("jupyter-lab").is_ok()) {
    CommandResult lab = sd({"run", "lab"});
    EXPECT_EQ(lab.exit_code, 1);
    EXPECT_TRUE(contains(lab.err, "the lab provider needs JupyterLab")) << lab.err;
  }
  EXPECT_EQ(sd({"ps", "-a"}).out.find("container"), std::string::npos);  // nothing was recorded
}

size_t discard(char*, size_t size, size_t count, void*) { return size * count; }

long http_status(const std::string& url) {
  CURL* curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
  long status = 0;
  if (curl_easy_perform(curl) == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  return status;
}

TEST_F(RunnerTest, CodeProviderServesJupyterWithItsToken) {
  if (!base::find_program("jupyter-notebook").is_ok()) GTEST_SKIP() << "jupyter-notebook is not installed";
  write_workflows("workflows:\n  - name: ide\n    provider: code\n");
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  std::string run = detached({"ide"});
  std::string url;
  ASSERT_TRUE(wait_for([&] {
    std::string log = logs(run);
    size_t ready = log.find("the IDE is ready: ");
    if (ready == std::string::npos) return false;
    url = log.substr(ready + 18, log.find('\n', ready) - ready - 18);
    return true;
  }, 90)) << logs(run);
  EXPECT_TRUE(contains(url, "?token=")) << url;
  EXPECT_EQ(http_status(url), 200) << url;
  std::string without_token = url.substr(0, url.find('?'));
  EXPECT_NE(http_status(without_token + "api/contents"), 200);
  EXPECT_EQ(sd({"stop", run}).exit_code, 0);
  EXPECT_EQ(status_of(run), "stopped");
}

// The seed tutorial: pull (here: the offline stand-in), then prompt, then find output/0.png.
TEST_F(RunnerTest, StableDiffusionExampleMakesAnImage) {
  copy_seed_example();
  ASSERT_EQ(sd({"init"}).exit_code, 0);
  CommandResult pull = sd({"run", "stable-diffusion", "-e", "HF_HUB_OFFLINE=1"});
  ASSERT_EQ(pull.exit_code, 0) << pull.err;
  EXPECT_TRUE(contains(pull.err, "random-weight stand-in")) << pull.err;
  CommandResult prompt = sd({"run", "prompt-stable", "-P", "cats in hats", "--steps", "2", "--seed", "7"});
  ASSERT_EQ(prompt.exit_code, 0) << prompt.err;
  CommandResult ps = sd({"ps"});
  std::string run;
  std::istringstream lines(ps.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (contains(line, " prompt-stable ")) run = line.substr(0, line.find(' '));
  }
  ASSERT_FALSE(run.empty()) << ps.out;
  CommandResult list = sd({"artifacts", "list", run});
  EXPECT_TRUE(contains(list.out, "output/0.png")) << list.out;
  TempDir download;
  ASSERT_EQ(sd({"artifacts", "download", run, "--to", download.path()}).exit_code, 0);
  auto png = base::read_file(download.file("output/0.png"));
  ASSERT_TRUE(png.is_ok());
  EXPECT_EQ(png->substr(1, 3), "PNG");
}

}  // namespace
}  // namespace sdstack

// The run store against real SQLite files in temp dirs: records, states, tags, secrets, and several
// processes writing one file at once.
#include "flow/run_store.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <thread>

#include "testing/testing.h"

namespace sdstack::flow {
namespace {

using base::Status;

const char kRepo[] = "/home/user/sd";

std::unique_ptr<RunStore> open_store(const std::string& path) {
  auto store = RunStore::open(path);
  EXPECT_TRUE(store.is_ok()) << store.status().message();
  return store.is_ok() ? std::move(store).value() : nullptr;
}

RunRecord make_run(const std::string& workflow, const std::string& repo = kRepo) {
  RunRecord run;
  run.repo = repo;
  run.workflow = workflow;
  run.provider = "bash";
  return run;
}

// Creates a run of `workflow` and returns its name ("" and a failure when it cannot).
std::string create(RunStore& store, const std::string& workflow, const std::string& repo = kRepo) {
  auto run = store.create_run(make_run(workflow, repo));
  EXPECT_TRUE(run.is_ok()) << run.status().message();
  return run.is_ok() ? run->name : "";
}

std::vector<std::string> names_of(const std::vector<RunRecord>& runs) {
  std::vector<std::string> names;
  for (const RunRecord& run : runs) names.push_back(run.name);
  return names;
}

// Whether `name` matches ^[a-z]+-[a-z]+-[0-9]+$ ("wet-mangust-3").
bool is_run_name(const std::string& name) {
  size_t i = 0;
  auto span = [&](auto in_class) {
    size_t start = i;
    while (i < name.size() && in_class(name[i])) ++i;
    return i > start;
  };
  auto lower = [](char c) { return c >= 'a' && c <= 'z'; };
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  auto dash = [&] { return i < name.size() && name[i++] == '-'; };
  return span(lower) && dash() && span(lower) && dash() && span(digit) && i == name.size();
}

// "wet-mangust-3" -> ("wet-mangust", 3).
std::pair<std::string, int> split_name(const std::string& name) {
  size_t dash = name.rfind('-');
  return {name.substr(0, dash), std::stoi(name.substr(dash + 1))};
}

// Waits a little so that the next timestamp differs from the last.
void next_millisecond() { std::this_thread::sleep_for(std::chrono::milliseconds(3)); }

TEST(RunStore, RunNameCheckerWorks) {
  EXPECT_TRUE(is_run_name("wet-mangust-12"));
  for (const char* bad : {"", "wet-mangust", "wet-mangust-", "Wet-mangust-1", "wet-mangust-1x", "wet--1",
                          "wet-man-gust-1", "-mangust-1", "wet-mangust-1-"}) {
    EXPECT_FALSE(is_run_name(bad)) << bad;
  }
}

TEST(RunStatus, NamesRoundTrip) {
  for (RunStatus status : {RunStatus::kSubmitted, RunStatus::kRunning, RunStatus::kUploading, RunStatus::kDone,
                           RunStatus::kFailed, RunStatus::kStopped, RunStatus::kAborted}) {
    auto parsed = parse_run_status(run_status_name(status));
    ASSERT_TRUE(parsed.is_ok()) << parsed.status().message();
    EXPECT_EQ(*parsed, status);
  }
  EXPECT_EQ(run_status_name(RunStatus::kUploading), "uploading");
  auto bad = parse_run_status("doen");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().message(),
            "unknown run status 'doen' (did you mean 'done'?); the statuses are submitted, running, uploading, done, "
            "failed, stopped, aborted");
}

TEST(RunStatus, FinishedStates) {
  EXPECT_FALSE(is_finished(RunStatus::kSubmitted));
  EXPECT_FALSE(is_finished(RunStatus::kRunning));
  EXPECT_FALSE(is_finished(RunStatus::kUploading));
  EXPECT_TRUE(is_finished(RunStatus::kDone));
  EXPECT_TRUE(is_finished(RunStatus::kFailed));
  EXPECT_TRUE(is_finished(RunStatus::kStopped));
  EXPECT_TRUE(is_finished(RunStatus::kAborted));
}

TEST(RunStore, EveryFieldRoundTrips) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  RunRecord run;
  run.name = "ignored";
  run.repo = kRepo;
  run.workflow = "prompt-stable";
  run.provider = "code";
  run.args = {"--prompt", "a cat's \"hat\"\n", "", "naïve ☃"};
  run.artifact_paths = {"./output", "./models/sd-v1-5"};
  run.status = RunStatus::kDone;  // create_run makes every run submitted
  run.exit_code = 3;
  run.reason = "exit code 3";
  run.started_ms = 1'700'000'000'001;
  run.finished_ms = 1'700'000'000'002;
  run.supervisor_pid = 4242;
  run.host = "gpu-box";
  run.repo_head = "0123456789abcdef0123456789abcdef01234567";
  run.app_url = "http://127.0.0.1:8080/?tkn=abc";
  run.tags = {"not-stored"};

  const int64_t before = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
  auto created = store->create_run(run);
  ASSERT_TRUE(created.is_ok()) << created.status().message();
  EXPECT_TRUE(is_run_name(created->name)) << created->name;
  EXPECT_EQ(created->status, RunStatus::kSubmitted);
  EXPECT_GE(created->submitted_ms, before);
  EXPECT_LE(created->submitted_ms, before + 60'000);
  EXPECT_TRUE(created->tags.empty());

  auto got = store->get_run(kRepo, created->name);
  ASSERT_TRUE(got.is_ok()) << got.status().message();
  EXPECT_EQ(got->name, created->name);
  EXPECT_EQ(got->repo, run.repo);
  EXPECT_EQ(got->workflow, run.workflow);
  EXPECT_EQ(got->provider, run.provider);
  EXPECT_EQ(got->args, run.args);
  EXPECT_EQ(got->artifact_paths, run.artifact_paths);
  EXPECT_EQ(got->status, RunStatus::kSubmitted);
  EXPECT_EQ(got->exit_code, std::optional<int>(3));
  EXPECT_EQ(got->reason, run.reason);
  EXPECT_EQ(got->submitted_ms, created->submitted_ms);
  EXPECT_EQ(got->started_ms, run.started_ms);
  EXPECT_EQ(got->finished_ms, run.finished_ms);
  EXPECT_EQ(got->supervisor_pid, run.supervisor_pid);
  EXPECT_EQ(got->host, run.host);
  EXPECT_EQ(got->repo_head, run.repo_head);
  EXPECT_EQ(got->app_url, run.app_url);
  EXPECT_TRUE(got->tags.empty());

  ASSERT_TRUE(store->set_supervisor_pid(kRepo, created->name, 99).is_ok());
  ASSERT_TRUE(store->set_app_url(kRepo, created->name, "http://127.0.0.1:9000/").is_ok());
  ASSERT_TRUE(store->add_tag(kRepo, "sd15", created->name).is_ok());
  ASSERT_TRUE(store->add_tag(kRepo, "best", created->name).is_ok());
  got = store->get_run(kRepo, created->name);
  ASSERT_TRUE(got.is_ok()) << got.status().message();
  EXPECT_EQ(got->supervisor_pid, 99);
  EXPECT_EQ(got->app_url, "http://127.0.0.1:9000/");
  EXPECT_EQ(got->tags, (std::vector<std::string>{"best", "sd15"}));

  // A run without an exit code keeps none, and the record's defaults survive.
  auto bare = store->create_run(make_run(""));
  ASSERT_TRUE(bare.is_ok()) << bare.status().message();
  got = store->get_run(kRepo, bare->name);
  ASSERT_TRUE(got.is_ok()) << got.status().message();
  EXPECT_EQ(got->exit_code, std::nullopt);
  EXPECT_EQ(got->workflow, "");
  EXPECT_TRUE(got->args.empty());
  EXPECT_EQ(got->host, "local");
  EXPECT_EQ(got->started_ms, 0);
}

TEST(RunStore, ArgumentsMustBeUtf8) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  RunRecord run = make_run("w");
  run.args = {"\xff\xfe"};
  auto created = store->create_run(run);
  ASSERT_FALSE(created.is_ok());
  EXPECT_EQ(created.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_EQ(created.status().message(), "a run's arguments must be valid UTF-8 text");
}

TEST(RunStore, ListsNewestFirstPerRepoAndWorkflow) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  const std::string a = create(*store, "train");
  const std::string b = create(*store, "prompt");
  next_millisecond();
  const std::string c = create(*store, "train");
  const std::string d = create(*store, "train");  // most likely in c's millisecond: creation order decides
  create(*store, "train", "/home/user/other");

  auto all = store->list_runs(kRepo);
  ASSERT_TRUE(all.is_ok()) << all.status().message();
  EXPECT_EQ(names_of(*all), (std::vector<std::string>{d, c, b, a}));
  auto train = store->list_runs(kRepo, "train");
  ASSERT_TRUE(train.is_ok()) << train.status().message();
  EXPECT_EQ(names_of(*train), (std::vector<std::string>{d, c, a}));
  auto none = store->list_runs("/nowhere");
  ASSERT_TRUE(none.is_ok()) << none.status().message();
  EXPECT_TRUE(none->empty());
}

TEST(RunStore, NamesAreNumberedPerStemAndNeverReused) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  // 200 names from 2500 stems: a few stems come up more than once.
  std::set<std::string> first;
  for (int i = 0; i < 200; ++i) first.insert(create(*store, "w"));
  ASSERT_EQ(first.size(), 200u);
  for (const std::string& name : first) ASSERT_TRUE(store->delete_run(kRepo, name).is_ok());
  std::set<std::string> second;
  for (int i = 0; i < 200; ++i) second.insert(create(*store, "w", "/home/user/other"));
  ASSERT_EQ(second.size(), 200u);

  // Each stem's numbers are 1..k over both batches: counted across deletions and repos.
  std::map<std::string, std::set<int>> numbers;
  for (const std::set<std::string>* batch : {&first, &second}) {
    for (const std::string& name : *batch) {
      EXPECT_TRUE(is_run_name(name)) << name;
      auto [stem, n] = split_name(name);
      EXPECT_TRUE(numbers[stem].insert(n).second) << name << " given twice";
    }
  }
  bool some_stem_repeats = false;
  for (const auto& [stem, ns] : numbers) {
    EXPECT_EQ(*ns.begin(), 1) << stem;
    EXPECT_EQ(*ns.rbegin(), static_cast<int>(ns.size())) << stem;
    some_stem_repeats |= ns.size() > 1;
  }
  EXPECT_TRUE(some_stem_repeats);
}

TEST(RunStore, TransitionsOnlyFromTheGivenStates) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  const std::string name = create(*store, "train");

  auto moved = store->transition(kRepo, name, {RunStatus::kRunning}, RunStatus::kDone, 0, "exit code 0");
  ASSERT_TRUE(moved.is_ok()) << moved.status().message();
  EXPECT_FALSE(*moved);
  auto run = store->get_run(kRepo, name);
  ASSERT_TRUE(run.is_ok()) << run.status().message();
  EXPECT_EQ(run->status, RunStatus::kSubmitted);
  EXPECT_EQ(run->exit_code, std::nullopt);
  EXPECT_EQ(run->reason, "");
  EXPECT_EQ(run->finished_ms, 0);

  moved = store->transition(kRepo, name, {RunStatus::kSubmitted}, RunStatus::kRunning);
  ASSERT_TRUE(moved.is_ok()) << moved.status().message();
  EXPECT_TRUE(*moved);
  run = store->get_run(kRepo, name);
  ASSERT_TRUE(run.is_ok()) << run.status().message();
  EXPECT_EQ(run->status, RunStatus::kRunning);
  EXPECT_GE(run->started_ms, run->submitted_ms);
  EXPECT_EQ(run->finished_ms, 0);
  const int64_t started_ms = run->started_ms;

  next_millisecond();
  moved = store->transition(kRepo, name, {RunStatus::kSubmitted, RunStatus::kRunning}, RunStatus::kFailed, 2,
                            "exit code 2");
  ASSERT_TRUE(moved.is_ok()) << moved.status().message();
  EXPECT_TRUE(*moved);
  run = store->get_run(kRepo, name);
  ASSERT_TRUE(run.is_ok()) << run.status().message();
  EXPECT_EQ(run->status, RunStatus::kFailed);
  EXPECT_EQ(run->started_ms, started_ms);
  EXPECT_GT(run->finished_ms, started_ms);
  EXPECT_EQ(run->exit_code, std::optional<int>(2));
  EXPECT_EQ(run->reason, "exit code 2");

  // A finished run stays as it ended: stopping it is refused.
  moved = store->transition(kRepo, name, {RunStatus::kSubmitted, RunStatus::kRunning, RunStatus::kUploading},
                            RunStatus::kStopped, std::nullopt, "stopped by the user");
  ASSERT_TRUE(moved.is_ok()) << moved.status().message();
  EXPECT_FALSE(*moved);
  run = store->get_run(kRepo, name);
  ASSERT_TRUE(run.is_ok()) << run.status().message();
  EXPECT_EQ(run->status, RunStatus::kFailed);
  EXPECT_EQ(run->reason, "exit code 2");

  auto missing = store->transition(kRepo, "no-such-run-1", {RunStatus::kSubmitted}, RunStatus::kRunning);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), base::StatusCode::kNotFound);
}

TEST(RunStore, LatestSuccessfulIsTheLastDoneRun) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  auto finish = [&](const std::string& name, RunStatus to) {
    auto moved = store->transition(kRepo, name, {RunStatus::kSubmitted, RunStatus::kRunning}, to);
    ASSERT_TRUE(moved.is_ok()) << moved.status().message();
    ASSERT_TRUE(*moved);
    next_millisecond();
  };
  auto latest = [&](const std::string& workflow) {
    auto run = store->latest_successful(kRepo, workflow);
    EXPECT_TRUE(run.is_ok()) << run.status().message();
    return run.is_ok() && *run ? (*run)->name : "";
  };
  const std::string early = create(*store, "train");
  const std::string late = create(*store, "train");
  EXPECT_EQ(latest("train"), "");
  finish(late, RunStatus::kDone);
  finish(early, RunStatus::kDone);  // submitted first, finished last: the one to use
  const std::string failed = create(*store, "train");
  finish(failed, RunStatus::kFailed);
  const std::string running = create(*store, "train");
  finish(running, RunStatus::kRunning);
  const std::string other = create(*store, "prompt");
  finish(other, RunStatus::kDone);
  create(*store, "train", "/home/user/other");

  EXPECT_EQ(latest("train"), early);
  EXPECT_EQ(latest("prompt"), other);
  EXPECT_EQ(latest("nothing"), "");
}

TEST(RunStore, GetUnknownRunSuggestsAName) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  const std::string name = create(*store, "train");
  auto [stem, n] = split_name(name);
  const std::string typo = stem + "-" + std::to_string(n + 6);

  auto run = store->get_run(kRepo, typo);
  ASSERT_FALSE(run.is_ok());
  EXPECT_EQ(run.status().code(), base::StatusCode::kNotFound);
  EXPECT_EQ(run.status().message(), "no run '" + typo + "' in this repo (did you mean '" + name + "'?)");

  run = store->get_run(kRepo, "xyz");
  ASSERT_FALSE(run.is_ok());
  EXPECT_EQ(run.status().message(), "no run 'xyz' in this repo");
  // Another repo's runs are not suggested.
  run = store->get_run("/home/user/other", name);
  ASSERT_FALSE(run.is_ok());
  EXPECT_EQ(run.status().message(), "no run '" + name + "' in this repo");

  EXPECT_EQ(store->set_app_url(kRepo, typo, "http://x/").code(), base::StatusCode::kNotFound);
  EXPECT_EQ(store->set_supervisor_pid(kRepo, typo, 1).code(), base::StatusCode::kNotFound);
  EXPECT_EQ(store->delete_run(kRepo, typo).message(),
            "no run '" + typo + "' in this repo (did you mean '" + name + "'?)");
}

TEST(RunStore, DeletingARunDeletesItsTags) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  const std::string doomed = create(*store, "train");
  const std::string kept = create(*store, "train");
  ASSERT_TRUE(store->add_tag(kRepo, "v1", doomed).is_ok());
  ASSERT_TRUE(store->add_tag(kRepo, "v2", kept).is_ok());

  ASSERT_TRUE(store->delete_run(kRepo, doomed).is_ok());
  auto tags = store->list_tags(kRepo);
  ASSERT_TRUE(tags.is_ok()) << tags.status().message();
  EXPECT_EQ(*tags, (std::vector<std::pair<std::string, std::string>>{{"v2", kept}}));
  auto tagged = store->tagged_run(kRepo, "v1");
  ASSERT_TRUE(tagged.is_ok()) << tagged.status().message();
  EXPECT_EQ(*tagged, std::nullopt);
  EXPECT_EQ(store->get_run(kRepo, doomed).status().code(), base::StatusCode::kNotFound);
  EXPECT_EQ(store->delete_run(kRepo, doomed).code(), base::StatusCode::kNotFound);
  // The tag's name is free again.
  EXPECT_TRUE(store->add_tag(kRepo, "v1", kept).is_ok());
}

TEST(RunStore, Tags) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  const std::string first = create(*store, "train");
  const std::string second = create(*store, "train");

  ASSERT_TRUE(store->add_tag(kRepo, "sd15", first).is_ok());
  ASSERT_TRUE(store->add_tag(kRepo, "a.b_c-1", second).is_ok());
  Status duplicate = store->add_tag(kRepo, "sd15", second);
  EXPECT_EQ(duplicate.code(), base::StatusCode::kInvalidArgument);
  EXPECT_EQ(duplicate.message(),
            "tag 'sd15' already names run '" + first + "': delete it first with `sdstack tags delete sd15`");
  // The same tag in another repo is another tag.
  const std::string elsewhere = create(*store, "train", "/home/user/other");
  EXPECT_TRUE(store->add_tag("/home/user/other", "sd15", elsewhere).is_ok());

  auto tags = store->list_tags(kRepo);
  ASSERT_TRUE(tags.is_ok()) << tags.status().message();
  EXPECT_EQ(*tags, (std::vector<std::pair<std::string, std::string>>{{"a.b_c-1", second}, {"sd15", first}}));
  auto tagged = store->tagged_run(kRepo, "sd15");
  ASSERT_TRUE(tagged.is_ok()) << tagged.status().message();
  EXPECT_EQ(*tagged, std::optional<std::string>(first));

  Status unknown_run = store->add_tag(kRepo, "v2", "no-such-run-1");
  EXPECT_EQ(unknown_run.code(), base::StatusCode::kNotFound);
  EXPECT_EQ(unknown_run.message(), "no run 'no-such-run-1' in this repo");
  for (const std::string& bad : {std::string(""), std::string("has space"), std::string("a/b")}) {
    Status status = store->add_tag(kRepo, bad, first);
    EXPECT_EQ(status.code(), base::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(status.message(), "bad tag '" + bad + "': a tag is one or more letters, digits, '.', '_' and '-'");
  }

  Status missing = store->delete_tag(kRepo, "sd16");
  EXPECT_EQ(missing.code(), base::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), "no tag 'sd16' in this repo (did you mean 'sd15'?)");
  EXPECT_EQ(store->delete_tag(kRepo, "zzzzzz").message(), "no tag 'zzzzzz' in this repo");
  ASSERT_TRUE(store->delete_tag(kRepo, "sd15").is_ok());
  tagged = store->tagged_run(kRepo, "sd15");
  ASSERT_TRUE(tagged.is_ok()) << tagged.status().message();
  EXPECT_EQ(*tagged, std::nullopt);
  // Deleting a tag leaves its run, and the other repo's tag.
  EXPECT_TRUE(store->get_run(kRepo, first).is_ok());
  tagged = store->tagged_run("/home/user/other", "sd15");
  ASSERT_TRUE(tagged.is_ok()) << tagged.status().message();
  EXPECT_EQ(*tagged, std::optional<std::string>(elsewhere));
}

TEST(RunStore, Secrets) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->put_secret(kRepo, "HF_TOKEN", "hf_old").is_ok());
  ASSERT_TRUE(store->put_secret(kRepo, "_x9", "").is_ok());
  ASSERT_TRUE(store->put_secret(kRepo, "HF_TOKEN", "hf_new").is_ok());
  ASSERT_TRUE(store->put_secret("/home/user/other", "WANDB_KEY", "w").is_ok());
  auto secrets = store->secrets(kRepo);
  ASSERT_TRUE(secrets.is_ok()) << secrets.status().message();
  EXPECT_EQ(*secrets, (std::map<std::string, std::string>{{"HF_TOKEN", "hf_new"}, {"_x9", ""}}));

  for (const std::string& bad : {std::string(""), std::string("1X"), std::string("MY-VAR"), std::string("A B")}) {
    Status status = store->put_secret(kRepo, bad, "v");
    EXPECT_EQ(status.code(), base::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(status.message(), "bad secret name '" + bad +
                                    "': secrets reach runs as environment variables, so a name is letters, digits "
                                    "and '_', not starting with a digit (HF_TOKEN)");
  }

  Status missing = store->delete_secret(kRepo, "HF_TOKN");
  EXPECT_EQ(missing.code(), base::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), "no secret 'HF_TOKN' in this repo (did you mean 'HF_TOKEN'?)");
  ASSERT_TRUE(store->delete_secret(kRepo, "HF_TOKEN").is_ok());
  secrets = store->secrets(kRepo);
  ASSERT_TRUE(secrets.is_ok()) << secrets.status().message();
  EXPECT_EQ(*secrets, (std::map<std::string, std::string>{{"_x9", ""}}));
}

TEST(RunStore, Repos) {
  testing::TempDir dir;
  auto store = open_store(dir.file("runs.db"));
  ASSERT_TRUE(store);
  auto found = store->find_repo(kRepo);
  ASSERT_TRUE(found.is_ok()) << found.status().message();
  EXPECT_EQ(*found, std::nullopt);

  ASSERT_TRUE(store->put_repo({kRepo, "git@github.com:me/sd.git", "abc123", 17}).is_ok());
  ASSERT_TRUE(store->put_repo({kRepo, "", "def456", 18}).is_ok());
  found = store->find_repo(kRepo);
  ASSERT_TRUE(found.is_ok()) << found.status().message();
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->root, kRepo);
  EXPECT_EQ((*found)->remote_url, "");
  EXPECT_EQ((*found)->head, "def456");
  EXPECT_EQ((*found)->initialized_ms, 18);
}

TEST(RunStore, ReopeningKeepsEverythingAndTheFileIsPrivate) {
  testing::TempDir dir;
  const std::string path = dir.file("runs.db");
  std::string name;
  {
    auto store = open_store(path);
    ASSERT_TRUE(store);
    name = create(*store, "train");
    ASSERT_TRUE(store->add_tag(kRepo, "v1", name).is_ok());
    ASSERT_TRUE(store->put_secret(kRepo, "HF_TOKEN", "hf_abc").is_ok());
  }
  struct stat info;
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);

  auto store = open_store(path);
  ASSERT_TRUE(store);
  auto run = store->get_run(kRepo, name);
  ASSERT_TRUE(run.is_ok()) << run.status().message();
  EXPECT_EQ(run->tags, std::vector<std::string>{"v1"});
  auto secrets = store->secrets(kRepo);
  ASSERT_TRUE(secrets.is_ok()) << secrets.status().message();
  EXPECT_EQ(secrets->at("HF_TOKEN"), "hf_abc");
  // A second connection in the same process sees the first one's writes.
  auto second = open_store(path);
  ASSERT_TRUE(second);
  const std::string newer = create(*second, "train");
  auto runs = store->list_runs(kRepo);
  ASSERT_TRUE(runs.is_ok()) << runs.status().message();
  EXPECT_EQ(names_of(*runs), (std::vector<std::string>{newer, name}));
}

TEST(RunStore, RefusesANewerSchema) {
  testing::TempDir dir;
  const std::string path = dir.file("runs.db");
  ASSERT_TRUE(open_store(path));
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);

  auto store = RunStore::open(path);
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().code(), base::StatusCode::kUnsupported);
  EXPECT_EQ(store.status().message(), path + ": the run database has schema version 99, newer than the 1 this "
                                             "sdstack knows: it was written by a newer sdstack; upgrade sdstack to use it");
}

TEST(RunStore, RefusesAFileThatIsNotADatabase) {
  testing::TempDir dir;
  const std::string path = dir.file("runs.db");
  testing::write_text_file(path, std::string(4096, 'x'));
  auto store = RunStore::open(path);
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().code(), base::StatusCode::kDataLoss);
  EXPECT_EQ(store.status().message(), path + ": file is not a database");

  store = RunStore::open(dir.file("missing/runs.db"));
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().message(),
            dir.file("missing/runs.db") + ": cannot create the run database: No such file or directory");
}

// Run in a child process: opens `path` and creates `count` runs, each with args {process, i}, moving
// each to running. Returns the exit status (0: all went well; errors go to stderr).
int create_runs_in_child(const std::string& path, int process, int count) {
  auto store = RunStore::open(path);
  if (!store.is_ok()) {
    std::fprintf(stderr, "process %d: %s\n", process, store.status().message().c_str());
    return 1;
  }
  for (int i = 0; i < count; ++i) {
    RunRecord run = make_run("train");
    run.args = {std::to_string(process), std::to_string(i)};
    auto created = (*store)->create_run(run);
    if (!created.is_ok()) {
      std::fprintf(stderr, "process %d: %s\n", process, created.status().message().c_str());
      return 1;
    }
    auto moved = (*store)->transition(kRepo, created->name, {RunStatus::kSubmitted}, RunStatus::kRunning);
    if (!moved.is_ok() || !*moved) {
      std::fprintf(stderr, "process %d: %s\n", process, moved.status().message().c_str());
      return 1;
    }
  }
  return 0;
}

TEST(RunStore, ProcessesCreatingRunsAtOnceGetDistinctNames) {
  testing::TempDir dir;
  const std::string path = dir.file("runs.db");  // not there yet: the children race to create it too
  constexpr int kProcesses = 8;
  constexpr int kRunsEach = 50;
  int start[2];
  ASSERT_EQ(::pipe(start), 0);
  std::vector<pid_t> children;
  for (int process = 0; process < kProcesses; ++process) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(start[1]);
      char byte;
      (void)::read(start[0], &byte, 1);  // returns at EOF: when the parent lets every child go at once
      ::_exit(create_runs_in_child(path, process, kRunsEach));
    }
    children.push_back(pid);
  }
  ::close(start[0]);
  ::close(start[1]);
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a child failed; see its message above";
  }

  auto store = open_store(path);
  ASSERT_TRUE(store);
  auto runs = store->list_runs(kRepo);
  ASSERT_TRUE(runs.is_ok()) << runs.status().message();
  EXPECT_EQ(runs->size(), static_cast<size_t>(kProcesses * kRunsEach));
  std::set<std::string> names;
  std::map<std::string, int> runs_per_process;
  for (const RunRecord& run : *runs) {
    EXPECT_TRUE(names.insert(run.name).second) << run.name << " given twice";
    EXPECT_EQ(run.status, RunStatus::kRunning) << run.name;
    ASSERT_EQ(run.args.size(), 2u);
    ++runs_per_process[run.args[0]];
  }
  ASSERT_EQ(runs_per_process.size(), static_cast<size_t>(kProcesses));
  for (const auto& [process, count] : runs_per_process) EXPECT_EQ(count, kRunsEach) << "process " << process;
}

}  // namespace
}  // namespace sdstack::flow

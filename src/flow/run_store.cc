// The run store: a thin layer of prepared statements over one SQLite file shared by sdstack processes.
#include "flow/run_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "base/strings.h"

namespace sdstack::flow {

using base::Result;
using base::Status;

namespace {

// Bumped with each change of the schema below; a file from a newer sdstack is refused.
constexpr int kSchemaVersion = 1;
constexpr int kBusyTimeoutMs = 30'000;

// Runs are looked up by (repo, name); `id` is their creation order. Tags point at a run's id, so
// deleting the run deletes them. Statuses are stored by name so that the file reads in `sqlite3`.
const char kSchema[] = R"sql(
CREATE TABLE repos (
  root TEXT PRIMARY KEY,
  remote_url TEXT NOT NULL,
  head TEXT NOT NULL,
  initialized_ms INTEGER NOT NULL
);
CREATE TABLE runs (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  repo TEXT NOT NULL,
  workflow TEXT NOT NULL,
  provider TEXT NOT NULL,
  args TEXT NOT NULL,            -- a JSON list of strings
  artifact_paths TEXT NOT NULL,  -- a JSON list of strings
  status TEXT NOT NULL,
  exit_code INTEGER,             -- NULL: none
  reason TEXT NOT NULL,
  submitted_ms INTEGER NOT NULL,
  started_ms INTEGER NOT NULL,
  finished_ms INTEGER NOT NULL,
  supervisor_pid INTEGER NOT NULL,
  host TEXT NOT NULL,
  repo_head TEXT NOT NULL,
  app_url TEXT NOT NULL,
  UNIQUE (repo, name)
);
-- How many runs were ever named "adjective-animal-N" per "adjective-animal", deleted ones included.
CREATE TABLE run_name_counts (
  stem TEXT PRIMARY KEY,
  count INTEGER NOT NULL
);
CREATE TABLE tags (
  repo TEXT NOT NULL,
  tag TEXT NOT NULL,
  run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  PRIMARY KEY (repo, tag)
);
CREATE INDEX tags_by_run ON tags (run_id);
CREATE TABLE secrets (
  repo TEXT NOT NULL,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (repo, name)
);
)sql";

// The columns read_run expects, in its order.
const char kRunColumns[] =
    "id, name, repo, workflow, provider, args, artifact_paths, status, exit_code, reason, submitted_ms, "
    "started_ms, finished_ms, supervisor_pid, host, repo_head, app_url";

const char* const kAdjectives[] = {
    "able",   "bold",   "brave", "bright", "calm",   "clever", "cold",   "cool",   "crisp",  "curly",
    "damp",   "dark",   "eager", "early",  "fair",   "fancy",  "fast",   "fluffy", "fresh",  "gentle",
    "giant",  "glad",   "grand", "happy",  "hot",    "jolly",  "keen",   "kind",   "lazy",   "little",
    "loud",   "lucky",  "merry", "mighty", "neat",   "odd",    "proud",  "quick",  "quiet",  "rapid",
    "shiny",  "silent", "sleepy", "smart", "soft",   "swift",  "tall",   "tiny",   "warm",   "wet"};
const char* const kAnimals[] = {
    "ant",    "badger", "bat",    "bear",   "beaver", "bison",  "cat",    "cobra",  "crab",   "crane",
    "crow",   "deer",   "dolphin", "eagle", "falcon", "ferret", "fox",    "frog",   "gecko",  "goat",
    "goose",  "hawk",   "heron",  "horse",  "ibis",   "jaguar", "koala",  "lemur",  "lion",   "lynx",
    "mangust", "mole",  "moose",  "newt",   "otter",  "owl",    "panda",  "parrot", "puffin", "rabbit",
    "raven",  "seal",   "shark",  "sloth",  "swan",   "tiger",  "turtle", "walrus", "wolf",   "yak"};

constexpr std::array<RunStatus, 7> kAllStatuses = {RunStatus::kSubmitted, RunStatus::kRunning,
                                                   RunStatus::kUploading, RunStatus::kDone,
                                                   RunStatus::kFailed,    RunStatus::kStopped,
                                                   RunStatus::kAborted};

int64_t now_ms() {
  using std::chrono::duration_cast, std::chrono::milliseconds, std::chrono::system_clock;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

bool is_tag_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}

bool is_env_name(const std::string& name) {
  auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  if (name.empty() || !letter(name[0])) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) { return letter(c) || (c >= '0' && c <= '9'); });
}

// One prepared statement. Parameters are bound in order (?1, ?2, ...); a failed bind is reported
// by the next step().
class Statement {
 public:
  Statement(RunDatabase* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}

  Statement& bind(std::string_view text) {
    // An empty view may have no data, and SQLite binds a null pointer as NULL.
    note(sqlite3_bind_text(stmt_.get(), ++bound_, text.empty() ? "" : text.data(), static_cast<int>(text.size()),
                           SQLITE_TRANSIENT));
    return *this;
  }
  Statement& bind(int64_t value) {
    note(sqlite3_bind_int64(stmt_.get(), ++bound_, value));
    return *this;
  }
  Statement& bind_null() {
    note(sqlite3_bind_null(stmt_.get(), ++bound_));
    return *this;
  }

  // True when a row is ready to read, false when the statement has finished.
  Result<bool> step();
  // Steps to the end, for statements that return no rows.
  Status run() {
    for (;;) {
      SD_ASSIGN_OR_RETURN(bool row, step());
      if (!row) return Status::ok();
    }
  }

  std::string text(int column) {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_.get(), column));
    return text ? std::string(text, static_cast<size_t>(sqlite3_column_bytes(stmt_.get(), column))) : "";
  }
  int64_t integer(int column) { return sqlite3_column_int64(stmt_.get(), column); }
  bool is_null(int column) { return sqlite3_column_type(stmt_.get(), column) == SQLITE_NULL; }

 private:
  struct Finalize {
    void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
  };
  void note(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  RunDatabase* db_;
  std::unique_ptr<sqlite3_stmt, Finalize> stmt_;
  int bound_ = 0;
  int bind_rc_ = SQLITE_OK;
};

}  // namespace

// The connection, and how its errors read: "PATH: [what: ]sqlite's message".
class RunDatabase {
 public:
  RunDatabase(std::string path, sqlite3* handle) : path_(std::move(path)), handle_(handle) {}
  ~RunDatabase() { sqlite3_close_v2(handle_); }
  RunDatabase(const RunDatabase&) = delete;
  RunDatabase& operator=(const RunDatabase&) = delete;

  const std::string& path() const { return path_; }
  sqlite3* handle() const { return handle_; }

  // A damaged file is DataLoss; anything else (locked, full, read-only) is IoError.
  Status error(const std::string& what, int rc) const {
    std::string message = path_ + ": " + (what.empty() ? "" : what + ": ") +
                          (handle_ ? sqlite3_errmsg(handle_) : sqlite3_errstr(rc));
    int primary = rc & 0xff;
    if (primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB) return base::data_loss(message);
    return base::io_error(message);
  }

  Result<Statement> prepare(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(handle_, sql.c_str(), static_cast<int>(sql.size()), &stmt, nullptr);
    if (rc != SQLITE_OK) return error("", rc);
    return Statement(this, stmt);
  }

  // Runs statements that take no parameters and whose rows, if any, are not needed.
  Status exec(const char* sql) {
    int rc = sqlite3_exec(handle_, sql, nullptr, nullptr, nullptr);
    return rc == SQLITE_OK ? Status::ok() : error("", rc);
  }

  Result<int64_t> pragma_integer(const std::string& pragma) {
    SD_ASSIGN_OR_RETURN(Statement query, prepare("PRAGMA " + pragma));
    SD_ASSIGN_OR_RETURN(bool row, query.step());
    return row ? query.integer(0) : 0;
  }

 private:
  std::string path_;
  sqlite3* handle_;
};

namespace {

Result<bool> Statement::step() {
  if (bind_rc_ != SQLITE_OK) return db_->error("cannot bind a parameter", bind_rc_);
  int rc = sqlite3_step(stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return db_->error("", rc);
}

// BEGIN IMMEDIATE: takes the write lock at once (waiting up to the busy timeout), so a transaction
// that reads and then writes never finds its reads stale. Rolled back unless committed.
class Transaction {
 public:
  static Result<Transaction> begin(RunDatabase& db) {
    SD_RETURN_IF_ERROR(db.exec("BEGIN IMMEDIATE"));
    return Transaction(&db);
  }
  Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction() {
    if (db_) (void)db_->exec("ROLLBACK");
  }

  Status commit() {
    RunDatabase* db = std::exchange(db_, nullptr);
    Status status = db->exec("COMMIT");
    if (!status.is_ok()) (void)db->exec("ROLLBACK");
    return status;
  }

 private:
  explicit Transaction(RunDatabase* db) : db_(db) {}
  RunDatabase* db_;
};

Result<std::string> to_json(const std::vector<std::string>& items, const char* what) {
  try {
    return nlohmann::json(items).dump();
  } catch (const nlohmann::json::exception&) {
    return base::invalid_argument(std::string("a run's ") + what + " must be valid UTF-8 text");
  }
}

Result<std::vector<std::string>> from_json(const std::string& text, const std::string& where) {
  nlohmann::json parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> items;
  if (!parsed.is_array()) return base::data_loss(where + " is not a JSON list: " + text);
  for (const nlohmann::json& item : parsed) {
    if (!item.is_string()) return base::data_loss(where + " holds a non-string: " + text);
    items.push_back(item.get<std::string>());
  }
  return items;
}

// One row of SELECT kRunColumns, without its tags.
Result<RunRecord> read_run(Statement& row, const std::string& db_path) {
  RunRecord run;
  run.name = row.text(1);
  const std::string where = db_path + ": run '" + run.name + "'";
  run.repo = row.text(2);
  run.workflow = row.text(3);
  run.provider = row.text(4);
  SD_ASSIGN_OR_RETURN(run.args, from_json(row.text(5), where + ": args"));
  SD_ASSIGN_OR_RETURN(run.artifact_paths, from_json(row.text(6), where + ": artifact_paths"));
  Result<RunStatus> status = parse_run_status(row.text(7));
  if (!status.is_ok()) return base::data_loss(where + ": " + status.status().message());
  run.status = *status;
  if (!row.is_null(8)) run.exit_code = static_cast<int>(row.integer(8));
  run.reason = row.text(9);
  run.submitted_ms = row.integer(10);
  run.started_ms = row.integer(11);
  run.finished_ms = row.integer(12);
  run.supervisor_pid = row.integer(13);
  run.host = row.text(14);
  run.repo_head = row.text(15);
  run.app_url = row.text(16);
  return run;
}

// Reads every row of `select` (a SELECT kRunColumns over `repo`'s runs) with its tags.
Result<std::vector<RunRecord>> read_runs(RunDatabase& db, Statement& select, const std::string& repo) {
  std::map<int64_t, std::vector<std::string>> tags_by_run;
  SD_ASSIGN_OR_RETURN(Statement tags, db.prepare("SELECT run_id, tag FROM tags WHERE repo = ? ORDER BY tag"));
  tags.bind(repo);
  for (;;) {
    SD_ASSIGN_OR_RETURN(bool row, tags.step());
    if (!row) break;
    tags_by_run[tags.integer(0)].push_back(tags.text(1));
  }
  std::vector<RunRecord> runs;
  for (;;) {
    SD_ASSIGN_OR_RETURN(bool row, select.step());
    if (!row) break;
    SD_ASSIGN_OR_RETURN(RunRecord run, read_run(select, db.path()));
    run.tags = tags_by_run[select.integer(0)];
    runs.push_back(std::move(run));
  }
  return runs;
}

// NotFound "no KIND 'NAME' in this repo (did you mean 'X'?)", the candidates from `names_sql`
// (a SELECT of one column with the repo as its parameter).
Status not_found_in_repo(RunDatabase& db, const std::string& kind, const std::string& names_sql,
                         const std::string& repo, const std::string& name) {
  SD_ASSIGN_OR_RETURN(Statement select, db.prepare(names_sql));
  select.bind(repo);
  std::vector<std::string> names;
  for (;;) {
    SD_ASSIGN_OR_RETURN(bool row, select.step());
    if (!row) break;
    names.push_back(select.text(0));
  }
  return base::not_found("no " + kind + " '" + name + "' in this repo" + base::did_you_mean(name, names));
}

Status run_not_found(RunDatabase& db, const std::string& repo, const std::string& name) {
  return not_found_in_repo(db, "run", "SELECT name FROM runs WHERE repo = ?", repo, name);
}

}  // namespace

std::string_view run_status_name(RunStatus status) {
  switch (status) {
    case RunStatus::kSubmitted: return "submitted";
    case RunStatus::kRunning: return "running";
    case RunStatus::kUploading: return "uploading";
    case RunStatus::kDone: return "done";
    case RunStatus::kFailed: return "failed";
    case RunStatus::kStopped: return "stopped";
    case RunStatus::kAborted: return "aborted";
  }
  return "unknown";
}

Result<RunStatus> parse_run_status(std::string_view text) {
  std::vector<std::string> names;
  for (RunStatus status : kAllStatuses) {
    if (run_status_name(status) == text) return status;
    names.emplace_back(run_status_name(status));
  }
  return base::invalid_argument("unknown run status '" + std::string(text) + "'" + base::did_you_mean(text, names) +
                                "; the statuses are " + base::join(names, ", "));
}

bool is_finished(RunStatus status) {
  return status == RunStatus::kDone || status == RunStatus::kFailed || status == RunStatus::kStopped ||
         status == RunStatus::kAborted;
}

RunStore::RunStore(std::unique_ptr<RunDatabase> db) : db_(std::move(db)), rng_(std::random_device{}()) {}

RunStore::~RunStore() = default;

Result<std::unique_ptr<RunStore>> RunStore::open(const std::string& path) {
  // Created here so that it is born 0600 (SQLite gives its -wal and -shm files the same mode). Only
  // when missing: closing a descriptor of a file drops every POSIX lock this process holds on it,
  // including those of another connection to it.
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
      return base::io_error(path + ": cannot create the run database: " + std::strerror(errno));
    }
    if (fd >= 0) ::close(fd);
  }
  sqlite3* handle = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  auto db = std::make_unique<RunDatabase>(path, handle);
  if (rc != SQLITE_OK) return db->error("cannot open the run database", rc);
  sqlite3_busy_timeout(handle, kBusyTimeoutMs);
  SD_RETURN_IF_ERROR(db->exec("PRAGMA foreign_keys = ON"));

  auto check_version = [&](int64_t version) -> Status {
    if (version <= kSchemaVersion) return Status::ok();
    return base::unsupported(path + ": the run database has schema version " + std::to_string(version) +
                             ", newer than the " + std::to_string(kSchemaVersion) +
                             " this sdstack knows: it was written by a newer sdstack; upgrade sdstack to use it");
  };
  SD_ASSIGN_OR_RETURN(int64_t version, db->pragma_integer("user_version"));
  SD_RETURN_IF_ERROR(check_version(version));
  // Persistent in the file: readers no longer block the writer, nor the writer readers. Switching
  // needs the file to itself and SQLite does not wait for that, so when processes open a fresh
  // file at once all but one find it busy: they retry until the busy timeout.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
  while ((rc = sqlite3_exec(handle, "PRAGMA journal_mode = WAL", nullptr, nullptr, nullptr)) == SQLITE_BUSY &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (rc != SQLITE_OK) return db->error("cannot switch to the WAL journal", rc);
  // With WAL a crash still leaves a consistent file; only the last commits before a power loss may
  // be lost, and a commit no longer waits for fsync.
  SD_RETURN_IF_ERROR(db->exec("PRAGMA synchronous = NORMAL"));
  if (version < kSchemaVersion) {
    // Another process may be creating the schema too: look again under the write lock.
    SD_ASSIGN_OR_RETURN(Transaction transaction, Transaction::begin(*db));
    SD_ASSIGN_OR_RETURN(version, db->pragma_integer("user_version"));
    SD_RETURN_IF_ERROR(check_version(version));
    if (version == 0) {
      SD_RETURN_IF_ERROR(db->exec(kSchema));
      SD_RETURN_IF_ERROR(db->exec(("PRAGMA user_version = " + std::to_string(kSchemaVersion)).c_str()));
    }
    SD_RETURN_IF_ERROR(transaction.commit());
  }
  return std::unique_ptr<RunStore>(new RunStore(std::move(db)));
}

Status RunStore::put_repo(const RepoRecord& repo) {
  SD_ASSIGN_OR_RETURN(Statement insert, db_->prepare("INSERT OR REPLACE INTO repos (root, remote_url, head, "
                                                     "initialized_ms) VALUES (?, ?, ?, ?)"));
  return insert.bind(repo.root).bind(repo.remote_url).bind(repo.head).bind(repo.initialized_ms).run();
}

Result<std::optional<RepoRecord>> RunStore::find_repo(const std::string& root) {
  SD_ASSIGN_OR_RETURN(Statement select,
                      db_->prepare("SELECT root, remote_url, head, initialized_ms FROM repos WHERE root = ?"));
  select.bind(root);
  SD_ASSIGN_OR_RETURN(bool row, select.step());
  if (!row) return std::optional<RepoRecord>();
  return std::optional<RepoRecord>(RepoRecord{select.text(0), select.text(1), select.text(2), select.integer(3)});
}

Result<RunRecord> RunStore::create_run(RunRecord run) {
  SD_ASSIGN_OR_RETURN(std::string args, to_json(run.args, "arguments"));
  SD_ASSIGN_OR_RETURN(std::string artifact_paths, to_json(run.artifact_paths, "artifact paths"));
  run.status = RunStatus::kSubmitted;
  run.submitted_ms = now_ms();
  run.tags.clear();
  std::uniform_int_distribution<size_t> adjective(0, std::size(kAdjectives) - 1), animal(0, std::size(kAnimals) - 1);
  const std::string stem = std::string(kAdjectives[adjective(rng_)]) + "-" + kAnimals[animal(rng_)];

  SD_ASSIGN_OR_RETURN(Transaction transaction, Transaction::begin(*db_));
  {
    SD_ASSIGN_OR_RETURN(Statement count, db_->prepare("INSERT INTO run_name_counts (stem, count) VALUES (?, 1) "
                                                      "ON CONFLICT (stem) DO UPDATE SET count = count + 1 "
                                                      "RETURNING count"));
    count.bind(stem);
    SD_ASSIGN_OR_RETURN(bool row, count.step());
    if (!row) return base::internal_error(db_->path() + ": no count came back for '" + stem + "'");
    run.name = stem + "-" + std::to_string(count.integer(0));
    SD_RETURN_IF_ERROR(count.run());
  }
  SD_ASSIGN_OR_RETURN(Statement insert, db_->prepare(
      "INSERT INTO runs (name, repo, workflow, provider, args, artifact_paths, status, exit_code, reason, "
      "submitted_ms, started_ms, finished_ms, supervisor_pid, host, repo_head, app_url) "
      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  insert.bind(run.name).bind(run.repo).bind(run.workflow).bind(run.provider).bind(args).bind(artifact_paths);
  insert.bind(run_status_name(run.status));
  if (run.exit_code) insert.bind(int64_t{*run.exit_code}); else insert.bind_null();
  insert.bind(run.reason).bind(run.submitted_ms).bind(run.started_ms).bind(run.finished_ms);
  insert.bind(run.supervisor_pid).bind(run.host).bind(run.repo_head).bind(run.app_url);
  SD_RETURN_IF_ERROR(insert.run());
  SD_RETURN_IF_ERROR(transaction.commit());
  return run;
}

Result<RunRecord> RunStore::get_run(const std::string& repo, const std::string& name) {
  SD_ASSIGN_OR_RETURN(Statement select, db_->prepare(std::string("SELECT ") + kRunColumns +
                                                     " FROM runs WHERE repo = ? AND name = ?"));
  select.bind(repo).bind(name);
  SD_ASSIGN_OR_RETURN(std::vector<RunRecord> runs, read_runs(*db_, select, repo));
  if (runs.empty()) return run_not_found(*db_, repo, name);
  return std::move(runs[0]);
}

Result<std::vector<RunRecord>> RunStore::list_runs(const std::string& repo, const std::string& workflow) {
  SD_ASSIGN_OR_RETURN(Statement select, db_->prepare(std::string("SELECT ") + kRunColumns +
                                                     " FROM runs WHERE repo = ?1 AND (?2 = '' OR workflow = ?2)"
                                                     " ORDER BY submitted_ms DESC, id DESC"));
  select.bind(repo).bind(workflow);
  return read_runs(*db_, select, repo);
}

Result<bool> RunStore::transition(const std::string& repo, const std::string& name,
                                  std::initializer_list<RunStatus> from, RunStatus to,
                                  std::optional<int> exit_code, const std::string& reason) {
  SD_ASSIGN_OR_RETURN(Transaction transaction, Transaction::begin(*db_));
  {
    SD_ASSIGN_OR_RETURN(Statement select, db_->prepare("SELECT status FROM runs WHERE repo = ? AND name = ?"));
    select.bind(repo).bind(name);
    SD_ASSIGN_OR_RETURN(bool row, select.step());
    if (!row) return run_not_found(*db_, repo, name);
    const std::string current = select.text(0);
    bool allowed = std::any_of(from.begin(), from.end(), [&](RunStatus s) { return run_status_name(s) == current; });
    if (!allowed) return false;
  }
  SD_ASSIGN_OR_RETURN(Statement update, db_->prepare(
      "UPDATE runs SET status = ?3,"
      " started_ms = CASE WHEN ?4 THEN ?5 ELSE started_ms END,"
      " finished_ms = CASE WHEN ?6 THEN ?5 ELSE finished_ms END,"
      " exit_code = coalesce(?7, exit_code),"
      " reason = CASE WHEN ?8 = '' THEN reason ELSE ?8 END"
      " WHERE repo = ?1 AND name = ?2"));
  update.bind(repo).bind(name).bind(run_status_name(to));
  update.bind(int64_t{to == RunStatus::kRunning}).bind(now_ms()).bind(int64_t{is_finished(to)});
  if (exit_code) update.bind(int64_t{*exit_code}); else update.bind_null();
  update.bind(reason);
  SD_RETURN_IF_ERROR(update.run());
  SD_RETURN_IF_ERROR(transaction.commit());
  return true;
}

Status RunStore::set_supervisor_pid(const std::string& repo, const std::string& name, int64_t pid) {
  SD_ASSIGN_OR_RETURN(Statement update,
                      db_->prepare("UPDATE runs SET supervisor_pid = ? WHERE repo = ? AND name = ?"));
  SD_RETURN_IF_ERROR(update.bind(pid).bind(repo).bind(name).run());
  return sqlite3_changes(db_->handle()) == 0 ? run_not_found(*db_, repo, name) : Status::ok();
}

Status RunStore::set_app_url(const std::string& repo, const std::string& name, const std::string& url) {
  SD_ASSIGN_OR_RETURN(Statement update, db_->prepare("UPDATE runs SET app_url = ? WHERE repo = ? AND name = ?"));
  SD_RETURN_IF_ERROR(update.bind(url).bind(repo).bind(name).run());
  return sqlite3_changes(db_->handle()) == 0 ? run_not_found(*db_, repo, name) : Status::ok();
}

Result<std::optional<RunRecord>> RunStore::latest_successful(const std::string& repo, const std::string& workflow) {
  SD_ASSIGN_OR_RETURN(Statement select, db_->prepare(std::string("SELECT ") + kRunColumns +
                                                     " FROM runs WHERE repo = ? AND workflow = ? AND status = ?"
                                                     " ORDER BY finished_ms DESC, id DESC LIMIT 1"));
  select.bind(repo).bind(workflow).bind(run_status_name(RunStatus::kDone));
  SD_ASSIGN_OR_RETURN(std::vector<RunRecord> runs, read_runs(*db_, select, repo));
  if (runs.empty()) return std::optional<RunRecord>();
  return std::optional<RunRecord>(std::move(runs[0]));
}

Status RunStore::delete_run(const std::string& repo, const std::string& name) {
  // The tags go with it: ON DELETE CASCADE.
  SD_ASSIGN_OR_RETURN(Statement remove, db_->prepare("DELETE FROM runs WHERE repo = ? AND name = ?"));
  SD_RETURN_IF_ERROR(remove.bind(repo).bind(name).run());
  return sqlite3_changes(db_->handle()) == 0 ? run_not_found(*db_, repo, name) : Status::ok();
}

Status RunStore::add_tag(const std::string& repo, const std::string& tag, const std::string& run_name) {
  if (tag.empty() || !std::all_of(tag.begin(), tag.end(), is_tag_char)) {
    return base::invalid_argument("bad tag '" + tag + "': a tag is one or more letters, digits, '.', '_' and '-'");
  }
  SD_ASSIGN_OR_RETURN(Transaction transaction, Transaction::begin(*db_));
  int64_t run_id = 0;
  {
    SD_ASSIGN_OR_RETURN(Statement select, db_->prepare("SELECT id FROM runs WHERE repo = ? AND name = ?"));
    select.bind(repo).bind(run_name);
    SD_ASSIGN_OR_RETURN(bool row, select.step());
    if (!row) return run_not_found(*db_, repo, run_name);
    run_id = select.integer(0);
  }
  SD_ASSIGN_OR_RETURN(std::optional<std::string> tagged, tagged_run(repo, tag));
  if (tagged) {
    return base::invalid_argument("tag '" + tag + "' already names run '" + *tagged +
                                  "': delete it first with `sdstack tags delete " + tag + "`");
  }
  SD_ASSIGN_OR_RETURN(Statement insert, db_->prepare("INSERT INTO tags (repo, tag, run_id) VALUES (?, ?, ?)"));
  SD_RETURN_IF_ERROR(insert.bind(repo).bind(tag).bind(run_id).run());
  return transaction.commit();
}

Status RunStore::delete_tag(const std::string& repo, const std::string& tag) {
  SD_ASSIGN_OR_RETURN(Statement remove, db_->prepare("DELETE FROM tags WHERE repo = ? AND tag = ?"));
  SD_RETURN_IF_ERROR(remove.bind(repo).bind(tag).run());
  if (sqlite3_changes(db_->handle()) > 0) return Status::ok();
  return not_found_in_repo(*db_, "tag", "SELECT tag FROM tags WHERE repo = ?", repo, tag);
}

Result<std::optional<std::string>> RunStore::tagged_run(const std::string& repo, const std::string& tag) {
  SD_ASSIGN_OR_RETURN(Statement select, db_->prepare("SELECT runs.name FROM tags JOIN runs ON runs.id = tags.run_id"
                                                     " WHERE tags.repo = ? AND tags.tag = ?"));
  select.bind(repo).bind(tag);
  SD_ASSIGN_OR_RETURN(bool row, select.step());
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(select.text(0));
}

Result<std::vector<std::pair<std::string, std::string>>> RunStore::list_tags(const std::string& repo) {
  SD_ASSIGN_OR_RETURN(Statement select, db_->prepare("SELECT tags.tag, runs.name FROM tags JOIN runs"
                                                     " ON runs.id = tags.run_id WHERE tags.repo = ? ORDER BY tags.tag"));
  select.bind(repo);
  std::vector<std::pair<std::string, std::string>> tags;
  for (;;) {
    SD_ASSIGN_OR_RETURN(bool row, select.step());
    if (!row) return tags;
    tags.emplace_back(select.text(0), select.text(1));
  }
}

Status RunStore::put_secret(const std::string& repo, const std::string& name, const std::string& value) {
  if (!is_env_name(name)) {
    return base::invalid_argument("bad secret name '" + name + "': secrets reach runs as environment variables, "
                                  "so a name is letters, digits and '_', not starting with a digit (HF_TOKEN)");
  }
  SD_ASSIGN_OR_RETURN(Statement insert,
                      db_->prepare("INSERT OR REPLACE INTO secrets (repo, name, value) VALUES (?, ?, ?)"));
  return insert.bind(repo).bind(name).bind(value).run();
}

Status RunStore::delete_secret(const std::string& repo, const std::string& name) {
  SD_ASSIGN_OR_RETURN(Statement remove, db_->prepare("DELETE FROM secrets WHERE repo = ? AND name = ?"));
  SD_RETURN_IF_ERROR(remove.bind(repo).bind(name).run());
  if (sqlite3_changes(db_->handle()) > 0) return Status::ok();
  return not_found_in_repo(*db_, "secret", "SELECT name FROM secrets WHERE repo = ?", repo, name);
}

Result<std::map<std::string, std::string>> RunStore::secrets(const std::string& repo) {
  SD_ASSIGN_OR_RETURN(Statement select, db_->prepare("SELECT name, value FROM secrets WHERE repo = ? ORDER BY name"));
  select.bind(repo);
  std::map<std::string, std::string> secrets;
  for (;;) {
    SD_ASSIGN_OR_RETURN(bool row, select.step());
    if (!row) return secrets;
    secrets[select.text(0)] = select.text(1);
  }
}

}  // namespace sdstack::flow

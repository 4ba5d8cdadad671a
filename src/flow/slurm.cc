// Slurm's command line: argv builders and output parsers (see slurm.h).
#include "flow/slurm.h"

#include <cassert>
#include <charconv>
#include <map>
#include <string_view>
#include <tuple>

#include "base/strings.h"
#include "flow/expressions.h"

namespace sdstack::flow {
namespace {

constexpr int64_t kMiB = 1024 * 1024;

std::string trim(const std::string& text) {
  size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t found = text.find(separator, start);
    parts.push_back(text.substr(start, found == std::string::npos ? std::string::npos : found - start));
    if (found == std::string::npos) return parts;
    start = found + 1;
  }
}

std::vector<std::string> lines_of(const std::string& out) {
  std::vector<std::string> lines;
  for (const std::string& line : split(out, '\n')) {
    std::string trimmed = trim(line);
    if (!trimmed.empty()) lines.push_back(trimmed);
  }
  return lines;
}

// A whole non-negative decimal number, or nullopt.
std::optional<int64_t> parse_count(std::string_view text) {
  int64_t value = 0;
  if (text.empty()) return std::nullopt;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 0) return std::nullopt;
  return value;
}

// sinfo's CPUs and memory: "64", or "64+" when a node group's nodes differ (the smallest is shown).
std::optional<int64_t> parse_sinfo_number(std::string text) {
  if (!text.empty() && text.back() == '+') text.pop_back();
  return parse_count(text);
}

// Slurm's time limits: "infinite"/"UNLIMITED" (0: none), "MM", "MM:SS", "HH:MM:SS", "D-HH",
// "D-HH:MM", "D-HH:MM:SS". Seconds are rounded up to a minute.
std::optional<int> parse_time_limit_minutes(const std::string& text) {
  if (text == "infinite" || text == "UNLIMITED" || text == "Partition_Limit") return 0;
  int64_t days = 0;
  std::string clock = text;
  size_t dash = text.find('-');
  if (dash != std::string::npos) {
    auto parsed_days = parse_count(std::string_view(text).substr(0, dash));
    if (!parsed_days) return std::nullopt;
    days = *parsed_days;
    clock = text.substr(dash + 1);
  }
  std::vector<int64_t> fields;
  for (const std::string& field : split(clock, ':')) {
    auto value = parse_count(field);
    if (!value) return std::nullopt;
    fields.push_back(*value);
  }
  int64_t hours = 0, minutes = 0, seconds = 0;
  if (dash != std::string::npos) {
    // After "D-" the fields are hours, then minutes, then seconds.
    if (fields.size() > 3) return std::nullopt;
    hours = fields[0];
    if (fields.size() > 1) minutes = fields[1];
    if (fields.size() > 2) seconds = fields[2];
  } else if (fields.size() == 1) {
    minutes = fields[0];
  } else if (fields.size() == 2) {
    minutes = fields[0];
    seconds = fields[1];
  } else if (fields.size() == 3) {
    hours = fields[0];
    minutes = fields[1];
    seconds = fields[2];
  } else {
    return std::nullopt;
  }
  return static_cast<int>(days * 24 * 60 + hours * 60 + minutes + (seconds + 59) / 60);
}

// GPUs in a node's GRES: "gpu:a100:4(S:0-1),shard:8" -> {4, "a100"}; "gpu:4" -> {4, ""}; "(null)"
// -> {0, ""}. Several GPU types on one node add up, and the name is then the first type's.
std::optional<std::pair<int, std::string>> parse_gres_gpus(const std::string& gres) {
  int count = 0;
  std::string name;
  if (gres == "(null)" || gres.empty()) return std::make_pair(0, name);
  for (std::string entry : split(gres, ',')) {
    size_t paren = entry.find('(');
    if (paren != std::string::npos) entry = entry.substr(0, paren);  // "(S:0-1)": the sockets
    std::vector<std::string> fields = split(entry, ':');
    if (fields[0] != "gpu") continue;
    if (fields.size() == 2) {
      auto value = parse_count(fields[1]);
      if (!value) return std::nullopt;
      count += static_cast<int>(*value);
    } else if (fields.size() == 3) {
      auto value = parse_count(fields[2]);
      if (!value) return std::nullopt;
      count += static_cast<int>(*value);
      if (name.empty()) name = fields[1];
    } else {
      return std::nullopt;
    }
  }
  return std::make_pair(count, name);
}

// "3:0" -> {3, 0}.
std::optional<std::pair<int, int>> parse_exit_code(const std::string& text) {
  size_t colon = text.find(':');
  if (colon == std::string::npos) return std::nullopt;
  auto status = parse_count(std::string_view(text).substr(0, colon));
  auto signal = parse_count(std::string_view(text).substr(colon + 1));
  if (!status || !signal) return std::nullopt;
  return std::make_pair(static_cast<int>(*status), static_cast<int>(*signal));
}

// The fields of `scontrol show job -o`'s line. Values may hold spaces (Command= has the script's
// arguments), so a word without '=' continues the value before it.
std::map<std::string, std::string> parse_key_values(const std::string& line) {
  std::map<std::string, std::string> fields;
  std::string* last = nullptr;
  for (const std::string& word : split(line, ' ')) {
    if (word.empty()) continue;
    size_t equals = word.find('=');
    if (equals == std::string::npos || equals == 0) {
      if (last != nullptr) *last += " " + word;
      continue;
    }
    last = &fields[word.substr(0, equals)];
    *last = word.substr(equals + 1);
  }
  return fields;
}

std::string quoted(const std::string& text) { return "'" + text + "'"; }

}  // namespace

// ---- Partitions ----------------------------------------------------------------------------

std::vector<std::string> sinfo_argv() { return {"sinfo", "-h", "-o", "%P|%a|%l|%D|%c|%m|%G"}; }

base::Result<std::vector<SlurmPartition>> parse_sinfo(const std::string& out) {
  std::vector<SlurmPartition> partitions;
  std::map<std::string, size_t> index_of;
  for (const std::string& line : lines_of(out)) {
    std::vector<std::string> fields = split(line, '|');
    auto bad = [&](const std::string& what) {
      return base::data_loss("sinfo printed '" + line + "': " + what +
                             " (expected 'partition|availability|time limit|nodes|cpus|memory MB|gres', "
                             "as `sinfo -h -o %P|%a|%l|%D|%c|%m|%G` prints)");
    };
    if (fields.size() != 7) return bad(std::to_string(fields.size()) + " fields, not 7");
    SlurmPartition group;
    group.name = fields[0];
    if (!group.name.empty() && group.name.back() == '*') {
      group.name.pop_back();
      group.is_default = true;
    }
    if (group.name.empty()) return bad("no partition name");
    group.state = fields[1];
    auto time_limit = parse_time_limit_minutes(fields[2]);
    if (!time_limit) return bad("time limit " + quoted(fields[2]) + " is not one Slurm writes");
    group.time_limit_minutes = *time_limit;
    auto nodes = parse_count(fields[3]);
    auto cpus = parse_sinfo_number(fields[4]);
    auto memory_mb = parse_sinfo_number(fields[5]);
    if (!nodes) return bad("node count " + quoted(fields[3]) + " is not a number");
    if (!cpus) return bad("CPU count " + quoted(fields[4]) + " is not a number");
    if (!memory_mb) return bad("memory " + quoted(fields[5]) + " is not a number of MB");
    auto gpus = parse_gres_gpus(fields[6]);
    if (!gpus) return bad("GRES " + quoted(fields[6]) + " is not 'gpu:[type:]count,...'");
    group.nodes = static_cast<int>(*nodes);
    group.cpus_per_node = static_cast<int>(*cpus);
    group.memory_bytes_per_node = *memory_mb * kMiB;
    group.gpus_per_node = gpus->first;
    group.gpu_name = gpus->second;

    auto found = index_of.find(group.name);
    if (found == index_of.end()) {
      index_of[group.name] = partitions.size();
      partitions.push_back(group);
      continue;
    }
    // Another node group of a partition already seen: count its nodes, keep the bigger node.
    SlurmPartition& partition = partitions[found->second];
    int total_nodes = partition.nodes + group.nodes;
    auto size = [](const SlurmPartition& p) {
      return std::make_tuple(p.gpus_per_node, p.cpus_per_node, p.memory_bytes_per_node);
    };
    if (size(group) > size(partition)) {
      partition.cpus_per_node = group.cpus_per_node;
      partition.memory_bytes_per_node = group.memory_bytes_per_node;
      partition.gpus_per_node = group.gpus_per_node;
      partition.gpu_name = group.gpu_name;
    }
    partition.nodes = total_nodes;
    partition.is_default = partition.is_default || group.is_default;
  }
  return partitions;
}

// ---- Submitting ----------------------------------------------------------------------------

std::vector<std::string> sbatch_argv(const SlurmJobRequest& request) {
  std::vector<std::string> argv = {"sbatch", "--parsable"};
  if (!request.job_name.empty()) argv.push_back("--job-name=" + request.job_name);
  if (!request.partition.empty()) argv.push_back("--partition=" + request.partition);
  if (!request.account.empty()) argv.push_back("--account=" + request.account);
  if (!request.qos.empty()) argv.push_back("--qos=" + request.qos);
  if (request.cpus > 0) argv.push_back("--cpus-per-task=" + std::to_string(request.cpus));
  if (request.memory_bytes > 0) {
    argv.push_back("--mem=" + std::to_string((request.memory_bytes + kMiB - 1) / kMiB) + "M");
  }
  if (request.gpu_count > 0) {
    std::string type = request.gpu_name.empty() ? "" : request.gpu_name + ":";
    argv.push_back("--gres=gpu:" + type + std::to_string(request.gpu_count));
  }
  if (request.time_limit_minutes > 0) argv.push_back("--time=" + std::to_string(request.time_limit_minutes));
  if (!request.work_dir.empty()) argv.push_back("--chdir=" + request.work_dir);
  if (!request.output_path.empty()) argv.push_back("--output=" + request.output_path);
  if (!request.export_env_names.empty()) argv.push_back("--export=" + base::join(request.export_env_names, ","));
  argv.push_back(request.script_path);
  return argv;
}

base::Result<std::string> parse_sbatch(const std::string& out) {
  std::vector<std::string> lines = lines_of(out);
  // --parsable prints "ID" or "ID;CLUSTER" as its last line (warnings may come before it).
  std::string id = lines.empty() ? "" : lines.back();
  id = id.substr(0, id.find(';'));
  if (!parse_count(id)) {
    return base::data_loss("sbatch printed '" + trim(out) + "', not a job id (is it a Slurm sbatch run with --parsable?)");
  }
  return id;
}

std::string batch_script(const std::vector<std::string>& argv) {
  assert(!argv.empty());
  std::vector<std::string> words;
  for (const std::string& word : argv) words.push_back(shell_quote(word));
  // exec: the program becomes the batch step's process, so scancel's signals reach it, not a bash
  // that would wait for it.
  return "#!/bin/bash\nexec " + base::join(words, " ") + "\n";
}

// ---- Stopping ------------------------------------------------------------------------------

std::vector<std::string> scancel_argv(const std::string& job_id, bool abort) {
  if (abort) return {"scancel", "--batch", "--signal=KILL", job_id};
  return {"scancel", job_id};
}

// ---- State ---------------------------------------------------------------------------------

bool SlurmJobState::infrastructure_failure() const {
  return cause == Cause::kNodeFail || cause == Cause::kBootFail || cause == Cause::kPreempted;
}

std::string SlurmJobState::describe() const {
  auto with_reason = [this](const std::string& text) {
    if (reason.empty() || reason == "None") return text;
    return text + " (Slurm's reason: " + reason + ")";
  };
  switch (phase) {
    case Phase::kPending:
      return reason.empty() || reason == "None" ? "pending" : "pending (" + reason + ")";
    case Phase::kRunning:
      return state == "RUNNING" ? "running" : "running (" + state + ")";
    case Phase::kUnknown:
      return "in Slurm state '" + state + "', which sdstack does not know";
    case Phase::kFinished:
      break;
  }
  switch (cause) {
    case Cause::kNone:
      return "completed";
    case Cause::kFailed:
      if (signal != 0 && exit_code == 0) return with_reason("killed by signal " + std::to_string(signal));
      if (exit_code == 0) return with_reason("failed");  // e.g. a batch script that could not start
      return with_reason("exited with status " + std::to_string(exit_code));
    case Cause::kOutOfMemory:
      return "out of memory: the job used more than its --mem; ask for more memory";
    case Cause::kNodeFail:
      return with_reason("node failure: a node running the job failed");
    case Cause::kCancelled:
      return with_reason("cancelled (scancel, by sdstack stop or an administrator)");
    case Cause::kTimeout:
      return "time limit: the job ran past its --time; ask for more time";
    case Cause::kPreempted:
      return with_reason("preempted: Slurm took its nodes for another job");
    case Cause::kBootFail:
      return with_reason("boot failure: a node for the job failed to boot");
    case Cause::kDeadline:
      return with_reason("deadline: the job could not finish before its --deadline");
  }
  return state;
}

base::Result<SlurmJobState> slurm_job_state(const std::string& state, const std::string& reason,
                                            const std::string& exit_code) {
  using Phase = SlurmJobState::Phase;
  using Cause = SlurmJobState::Cause;
  SlurmJobState job;
  // sacct writes "CANCELLED by 0" (the uid that cancelled); squeue and scontrol the bare name.
  job.state = trim(state.substr(0, state.find(' ')));
  job.reason = trim(reason);
  if (!exit_code.empty()) {
    auto code = parse_exit_code(exit_code);
    if (!code) return base::data_loss("Slurm's ExitCode '" + exit_code + "' is not 'status:signal'");
    job.exit_code = code->first;
    job.signal = code->second;
  }
  static const std::map<std::string, std::pair<Phase, Cause>> kStates = {
      {"PENDING", {Phase::kPending, Cause::kNone}},
      {"CONFIGURING", {Phase::kPending, Cause::kNone}},  // nodes being booted for it
      {"REQUEUED", {Phase::kPending, Cause::kNone}},
      {"REQUEUE_FED", {Phase::kPending, Cause::kNone}},
      {"REQUEUE_HOLD", {Phase::kPending, Cause::kNone}},
      {"RESV_DEL_HOLD", {Phase::kPending, Cause::kNone}},
      {"RUNNING", {Phase::kRunning, Cause::kNone}},
      // Holding its nodes: still to be watched.
      {"COMPLETING", {Phase::kRunning, Cause::kNone}},
      {"SIGNALING", {Phase::kRunning, Cause::kNone}},
      {"STAGE_OUT", {Phase::kRunning, Cause::kNone}},
      {"RESIZING", {Phase::kRunning, Cause::kNone}},
      {"SUSPENDED", {Phase::kRunning, Cause::kNone}},
      {"STOPPED", {Phase::kRunning, Cause::kNone}},
      {"COMPLETED", {Phase::kFinished, Cause::kNone}},
      {"FAILED", {Phase::kFinished, Cause::kFailed}},
      {"SPECIAL_EXIT", {Phase::kFinished, Cause::kFailed}},
      {"OUT_OF_MEMORY", {Phase::kFinished, Cause::kOutOfMemory}},
      {"NODE_FAIL", {Phase::kFinished, Cause::kNodeFail}},
      {"CANCELLED", {Phase::kFinished, Cause::kCancelled}},
      {"REVOKED", {Phase::kFinished, Cause::kCancelled}},  // a federated job that ran elsewhere
      {"TIMEOUT", {Phase::kFinished, Cause::kTimeout}},
      {"PREEMPTED", {Phase::kFinished, Cause::kPreempted}},
      {"BOOT_FAIL", {Phase::kFinished, Cause::kBootFail}},
      {"DEADLINE", {Phase::kFinished, Cause::kDeadline}},
  };
  auto found = kStates.find(job.state);
  if (found != kStates.end()) std::tie(job.phase, job.cause) = found->second;
  return job;
}

std::vector<std::string> squeue_argv(const std::string& job_id) {
  return {"squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r"};
}

base::Result<std::optional<SlurmJobState>> parse_squeue(const std::string& out) {
  std::vector<std::string> lines = lines_of(out);
  if (lines.empty()) return std::optional<SlurmJobState>();
  std::vector<std::string> fields = split(lines[0], '|');
  if (fields.size() != 2) {
    return base::data_loss("squeue printed '" + lines[0] + "', not 'STATE|REASON' (as `squeue -o %T|%r` prints)");
  }
  SD_ASSIGN_OR_RETURN(SlurmJobState job, slurm_job_state(fields[0], fields[1], ""));
  return std::optional<SlurmJobState>(job);
}

std::vector<std::string> scontrol_job_argv(const std::string& job_id) {
  return {"scontrol", "show", "job", "-o", job_id};
}

base::Result<std::optional<SlurmJobState>> parse_scontrol_job(const std::string& out) {
  std::vector<std::string> lines = lines_of(out);
  if (lines.empty()) return std::optional<SlurmJobState>();
  // An array or heterogeneous job prints one line per part; the first is the one submitted.
  std::map<std::string, std::string> fields = parse_key_values(lines[0]);
  auto state = fields.find("JobState");
  if (state == fields.end()) {
    return base::data_loss("scontrol show job printed no JobState= in '" + lines[0].substr(0, 200) + "'");
  }
  SD_ASSIGN_OR_RETURN(SlurmJobState job, slurm_job_state(state->second, fields["Reason"], fields["ExitCode"]));
  return std::optional<SlurmJobState>(job);
}

std::vector<std::string> sacct_argv(const std::string& job_id) {
  return {"sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,Reason"};
}

base::Result<std::optional<SlurmJobState>> parse_sacct(const std::string& out) {
  std::vector<std::string> lines = lines_of(out);
  if (lines.empty()) return std::optional<SlurmJobState>();
  // -X: the allocation only, one line; a requeued job has one per attempt, the last is the latest.
  std::vector<std::string> fields = split(lines.back(), '|');
  if (fields.size() != 3) {
    return base::data_loss("sacct printed '" + lines.back() +
                           "', not 'State|ExitCode|Reason' (as `sacct -P -o State,ExitCode,Reason` prints)");
  }
  SD_ASSIGN_OR_RETURN(SlurmJobState job, slurm_job_state(fields[0], fields[2], fields[1]));
  return std::optional<SlurmJobState>(job);
}

std::vector<SlurmStateQuery> state_query_order(const std::string& job_id) {
  return {{scontrol_job_argv(job_id), &parse_scontrol_job}, {sacct_argv(job_id), &parse_sacct}};
}

base::Result<SlurmJobState> query_slurm_job_state(const std::string& job_id, const SlurmRunner& run) {
  std::vector<std::string> answers;
  for (const SlurmStateQuery& query : state_query_order(job_id)) {
    SD_ASSIGN_OR_RETURN(base::ProcessOutput output, run(query.argv));
    std::string answer = "`";
    answer += base::join(query.argv, " ");
    answer += "`";
    if (output.exit_code != 0) {
      // "Invalid job id specified" (forgotten by the controller), "accounting storage is disabled".
      std::string said = trim(output.err.empty() ? output.out : output.err);
      answer += " exited " + std::to_string(output.exit_code);
      if (!said.empty()) answer += ": " + said;
      answers.push_back(answer);
      continue;
    }
    SD_ASSIGN_OR_RETURN(std::optional<SlurmJobState> job, query.parse(output.out));
    if (job) return *job;
    answers.push_back(answer + " knows no such job");
  }
  return base::not_found("Slurm job " + job_id + " is not known to the cluster any more: " +
                         base::join(answers, "; ") +
                         " (its record is gone; a cluster with accounting (slurmdbd) keeps it for sacct)");
}

}  // namespace sdstack::flow

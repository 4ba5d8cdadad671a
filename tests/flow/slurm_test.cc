// Slurm's argv builders and output parsers, against outputs captured from Slurm 22.05 (the test
// cluster of tests/remote/fixtures/slurm.sh) and, for what one node can't show (GPUs, several node
// groups), lines in the formats Slurm's docs give.
#include "flow/slurm.h"

#include <gtest/gtest.h>

#include "flow/expressions.h"

namespace sdstack::flow {
namespace {

using Cause = SlurmJobState::Cause;
using Phase = SlurmJobState::Phase;

// ---- sinfo ---------------------------------------------------------------------------------

TEST(SlurmPartitions, ParsesTheTestCluster) {
  // `sinfo -h -o %P|%a|%l|%D|%c|%m|%G` on the fixture's cluster.
  auto partitions = parse_sinfo("debug*|up|infinite|1|2|23593|(null)\n");
  ASSERT_TRUE(partitions.is_ok()) << partitions.status().message();
  ASSERT_EQ(partitions->size(), 1u);
  const SlurmPartition& debug = (*partitions)[0];
  EXPECT_EQ(debug.name, "debug");
  EXPECT_TRUE(debug.is_default);
  EXPECT_EQ(debug.state, "up");
  EXPECT_EQ(debug.time_limit_minutes, 0);
  EXPECT_EQ(debug.nodes, 1);
  EXPECT_EQ(debug.cpus_per_node, 2);
  EXPECT_EQ(debug.memory_bytes_per_node, int64_t{23593} * 1024 * 1024);
  EXPECT_EQ(debug.gpus_per_node, 0);
  EXPECT_EQ(debug.gpu_name, "");
}

TEST(SlurmPartitions, ReadsGpusAndTimeLimits) {
  auto partitions = parse_sinfo(
      "cpu*|up|1-00:00:00|16|64|257000|(null)\n"
      "gpu|up|2:00:00|4|32|515000|gpu:a100:4(S:0-1)\n"
      "short|up|30:00|2|8|32000|gpu:2,shard:8\n"
      "mig|drain|45|1|16|64000|gpu:1g.5gb:7\n");
  ASSERT_TRUE(partitions.is_ok()) << partitions.status().message();
  ASSERT_EQ(partitions->size(), 4u);
  EXPECT_EQ((*partitions)[0].time_limit_minutes, 24 * 60);
  EXPECT_FALSE((*partitions)[1].is_default);
  EXPECT_EQ((*partitions)[1].time_limit_minutes, 120);
  EXPECT_EQ((*partitions)[1].gpus_per_node, 4);
  EXPECT_EQ((*partitions)[1].gpu_name, "a100");
  EXPECT_EQ((*partitions)[2].time_limit_minutes, 30);  // MM:SS
  EXPECT_EQ((*partitions)[2].gpus_per_node, 2);       // shards are not GPUs
  EXPECT_EQ((*partitions)[2].gpu_name, "");
  EXPECT_EQ((*partitions)[3].time_limit_minutes, 45);
  EXPECT_EQ((*partitions)[3].gpus_per_node, 7);
  EXPECT_EQ((*partitions)[3].gpu_name, "1g.5gb");
  EXPECT_EQ((*partitions)[3].state, "drain");
}

TEST(SlurmPartitions, MergesNodeGroupsKeepingTheBiggestNode) {
  // One partition, three node groups: small CPU nodes, big GPU nodes ("+": sizes vary, at least).
  auto partitions = parse_sinfo(
      "mixed|up|7-00:00:00|10|16|64000|(null)\n"
      "mixed|up|7-00:00:00|2|48+|384000+|gpu:v100:8\n"
      "mixed|up|7-00:00:00|3|96|768000|(null)\n");
  ASSERT_TRUE(partitions.is_ok()) << partitions.status().message();
  ASSERT_EQ(partitions->size(), 1u);
  const SlurmPartition& mixed = (*partitions)[0];
  EXPECT_EQ(mixed.nodes, 15);
  EXPECT_EQ(mixed.gpus_per_node, 8);  // GPUs first: the node a GPU job would need
  EXPECT_EQ(mixed.gpu_name, "v100");
  EXPECT_EQ(mixed.cpus_per_node, 48);
  EXPECT_EQ(mixed.memory_bytes_per_node, int64_t{384000} * 1024 * 1024);
  EXPECT_EQ(mixed.time_limit_minutes, 7 * 24 * 60);
}

TEST(SlurmPartitions, RoundsSecondsUp) {
  auto partitions = parse_sinfo("p|up|1-02:03:04|1|1|1|(null)\n");
  ASSERT_TRUE(partitions.is_ok()) << partitions.status().message();
  EXPECT_EQ((*partitions)[0].time_limit_minutes, 24 * 60 + 2 * 60 + 4);
}

TEST(SlurmPartitions, RejectsOtherFormatsNamingTheLine) {
  auto wrong_fields = parse_sinfo("debug* up infinite 1 idle localhost\n");
  ASSERT_FALSE(wrong_fields.is_ok());
  EXPECT_EQ(wrong_fields.status().message(),
            "sinfo printed 'debug* up infinite 1 idle localhost': 1 fields, not 7 (expected 'partition|availability|"
            "time limit|nodes|cpus|memory MB|gres', as `sinfo -h -o %P|%a|%l|%D|%c|%m|%G` prints)");
  auto bad_memory = parse_sinfo("debug*|up|infinite|1|2|lots|(null)\n");
  ASSERT_FALSE(bad_memory.is_ok());
  EXPECT_NE(bad_memory.status().message().find("memory 'lots' is not a number of MB"), std::string::npos)
      << bad_memory.status().message();
  EXPECT_FALSE(parse_sinfo("debug*|up|soon|1|2|100|(null)\n").is_ok());
  EXPECT_FALSE(parse_sinfo("debug*|up|infinite|1|2|100|gpu:a:b:c\n").is_ok());
}

TEST(SlurmPartitions, EmptyOutputIsNoPartitions) {
  auto partitions = parse_sinfo("");
  ASSERT_TRUE(partitions.is_ok());
  EXPECT_TRUE(partitions->empty());
}

// ---- sbatch --------------------------------------------------------------------------------

TEST(SlurmSubmit, BuildsEveryOption) {
  SlurmJobRequest request;
  request.job_name = "prompt-stable";
  request.partition = "gpu";
  request.account = "vision";
  request.qos = "normal";
  request.cpus = 4;
  request.memory_bytes = int64_t{8} * 1024 * 1024 * 1024 + 1;  // one byte over 8 GiB: rounds up
  request.gpu_count = 1;
  request.gpu_name = "a100";
  request.time_limit_minutes = 90;
  request.work_dir = "/scratch/run 1";
  request.output_path = "/scratch/run 1/log";
  request.script_path = "/scratch/run 1/job.sh";
  request.export_env_names = {"PATH", "HF_TOKEN"};
  EXPECT_EQ(sbatch_argv(request),
            (std::vector<std::string>{"sbatch", "--parsable", "--job-name=prompt-stable", "--partition=gpu",
                                      "--account=vision", "--qos=normal", "--cpus-per-task=4", "--mem=8193M",
                                      "--gres=gpu:a100:1", "--time=90", "--chdir=/scratch/run 1",
                                      "--output=/scratch/run 1/log", "--export=PATH,HF_TOKEN",
                                      "/scratch/run 1/job.sh"}));
}

TEST(SlurmSubmit, LeavesOutWhatIsUnset) {
  SlurmJobRequest request;
  request.memory_bytes = 64 * 1024 * 1024;
  request.gpu_count = 2;
  request.script_path = "job.sh";
  EXPECT_EQ(sbatch_argv(request), (std::vector<std::string>{"sbatch", "--parsable", "--mem=64M", "--gres=gpu:2", "job.sh"}));
}

TEST(SlurmSubmit, ParsesTheJobId) {
  auto plain = parse_sbatch("15\n");  // captured
  ASSERT_TRUE(plain.is_ok()) << plain.status().message();
  EXPECT_EQ(*plain, "15");
  auto clustered = parse_sbatch("4242;cluster2\n");
  ASSERT_TRUE(clustered.is_ok());
  EXPECT_EQ(*clustered, "4242");
  auto not_parsable = parse_sbatch("Submitted batch job 15\n");
  ASSERT_FALSE(not_parsable.is_ok());
  EXPECT_EQ(not_parsable.status().message(),
            "sbatch printed 'Submitted batch job 15', not a job id (is it a Slurm sbatch run with --parsable?)");
  EXPECT_FALSE(parse_sbatch("").is_ok());
}

TEST(SlurmSubmit, BatchScriptExecsTheQuotedCommand) {
  EXPECT_EQ(batch_script({"sdstack", "generate", "--prompt", "cats in hats", "it's"}),
            "#!/bin/bash\nexec sdstack generate --prompt 'cats in hats' " + shell_quote("it's") + "\n");
}

// ---- scancel -------------------------------------------------------------------------------

TEST(SlurmStop, GracefulCancelsAbortKillsTheBatchStep) {
  EXPECT_EQ(scancel_argv("42", false), (std::vector<std::string>{"scancel", "42"}));
  EXPECT_EQ(scancel_argv("42", true), (std::vector<std::string>{"scancel", "--batch", "--signal=KILL", "42"}));
}

// ---- Job state -----------------------------------------------------------------------------

// Lines `scontrol show job -o ID` printed on the test cluster (shortened after Command=; the
// remaining fields don't matter to the parser, which takes values with spaces as they come).
const char kCompleted[] =
    "JobId=1 JobName=echo UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 "
    "Account=(null) QOS=(null) JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A "
    "NtasksPerN:B:S:C=0:0:*:* CoreSpec=* Command=/tmp/sxw/echo.sh WorkDir=/tmp/sxw StdErr=/tmp/sxw/echo.out "
    "StdIn=/dev/null StdOut=/tmp/sxw/echo.out Power= \n";
const char kExit3[] =
    "JobId=2 JobName=exit3 UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Nice=0 "
    "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A\n";
const char kOutOfMemory[] =
    "JobId=3 JobName=oom UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 Nice=0 "
    "Account=(null) QOS=(null) JobState=OUT_OF_MEMORY Reason=OutOfMemory Dependency=(null) Requeue=1 "
    "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:125 RunTime=00:00:01 TimeLimit=UNLIMITED TimeMin=N/A "
    "TRES=cpu=1,mem=64M,node=1,billing=1 MinMemoryNode=64M Command=/tmp/sxw/oom.sh WorkDir=/tmp/sxw\n";
const char kNodeFail[] =
    "JobId=15 JobName=trap.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901745 Nice=0 "
    "Account=(null) QOS=(null) JobState=NODE_FAIL Reason=NodeDown Dependency=(null) Requeue=0 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:02 TimeLimit=UNLIMITED TimeMin=N/A "
    "Command=/tmp/sxw/trap.sh /tmp/sxw/N.flag WorkDir=/tmp/sxw StdErr=/tmp/sxw/N.out\n";
const char kAborted[] =
    "JobId=10 JobName=trap.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901750 Nice=0 "
    "Account=(null) QOS=(null) JobState=FAILED Reason=JobLaunchFailure Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:9 RunTime=00:00:02 TimeLimit=UNLIMITED TimeMin=N/A\n";
const char kCancelled[] =
    "JobId=4 JobName=trap.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901756 Nice=0 "
    "Account=(null) QOS=(null) JobState=CANCELLED Reason=None Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:02 TimeLimit=UNLIMITED TimeMin=N/A\n";
const char kTimeout[] =
    "JobId=14 JobName=timeout UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901746 Nice=0 "
    "Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restarts=1 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:01:00 TimeLimit=00:01:00 TimeMin=N/A\n";
const char kPending[] =
    "JobId=13 JobName=trap.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901747 Nice=0 "
    "Account=(null) QOS=(null) JobState=PENDING Reason=Resources Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A\n";

SlurmJobState scontrol_state(const char* out) {
  auto state = parse_scontrol_job(out);
  EXPECT_TRUE(state.is_ok()) << state.status().message();
  if (!state.is_ok() || !state->has_value()) {
    ADD_FAILURE() << "no state in " << out;
    return {};
  }
  return **state;
}

TEST(SlurmState, CompletedJob) {
  SlurmJobState job = scontrol_state(kCompleted);
  EXPECT_EQ(job.phase, Phase::kFinished);
  EXPECT_EQ(job.cause, Cause::kNone);
  EXPECT_EQ(job.state, "COMPLETED");
  EXPECT_EQ(job.exit_code, 0);
  EXPECT_FALSE(job.infrastructure_failure());
  EXPECT_EQ(job.describe(), "completed");
}

TEST(SlurmState, NonZeroExitIsTheUsersFailure) {
  SlurmJobState job = scontrol_state(kExit3);
  EXPECT_EQ(job.phase, Phase::kFinished);
  EXPECT_EQ(job.cause, Cause::kFailed);
  EXPECT_EQ(job.exit_code, 3);
  EXPECT_EQ(job.signal, 0);
  EXPECT_EQ(job.reason, "NonZeroExitCode");
  EXPECT_FALSE(job.infrastructure_failure());
  EXPECT_EQ(job.describe(), "exited with status 3 (Slurm's reason: NonZeroExitCode)");
}

TEST(SlurmState, OutOfMemory) {
  SlurmJobState job = scontrol_state(kOutOfMemory);
  EXPECT_EQ(job.cause, Cause::kOutOfMemory);
  EXPECT_EQ(job.signal, 125);
  EXPECT_FALSE(job.infrastructure_failure());  // the same --mem would fail again
  EXPECT_EQ(job.describe(), "out of memory: the job used more than its --mem; ask for more memory");
}

TEST(SlurmState, NodeFailureIsTheInfrastructures) {
  SlurmJobState job = scontrol_state(kNodeFail);
  EXPECT_EQ(job.cause, Cause::kNodeFail);
  EXPECT_EQ(job.reason, "NodeDown");
  EXPECT_TRUE(job.infrastructure_failure());
  EXPECT_EQ(job.describe(), "node failure: a node running the job failed (Slurm's reason: NodeDown)");
}

TEST(SlurmState, AbortedAndCancelled) {
  SlurmJobState aborted = scontrol_state(kAborted);
  EXPECT_EQ(aborted.cause, Cause::kFailed);
  EXPECT_EQ(aborted.signal, 9);
  EXPECT_EQ(aborted.describe(), "killed by signal 9 (Slurm's reason: JobLaunchFailure)");
  SlurmJobState cancelled = scontrol_state(kCancelled);
  EXPECT_EQ(cancelled.cause, Cause::kCancelled);
  EXPECT_FALSE(cancelled.infrastructure_failure());
}

TEST(SlurmState, TimeoutAndPending) {
  SlurmJobState timeout = scontrol_state(kTimeout);
  EXPECT_EQ(timeout.cause, Cause::kTimeout);
  EXPECT_EQ(timeout.describe(), "time limit: the job ran past its --time; ask for more time");
  SlurmJobState pending = scontrol_state(kPending);
  EXPECT_EQ(pending.phase, Phase::kPending);
  EXPECT_EQ(pending.cause, Cause::kNone);
  EXPECT_EQ(pending.describe(), "pending (Resources)");
}

TEST(SlurmState, ScontrolEdgeCases) {
  auto nothing = parse_scontrol_job("");
  ASSERT_TRUE(nothing.is_ok());
  EXPECT_FALSE(nothing->has_value());
  auto no_state = parse_scontrol_job("JobId=1 JobName=x\n");
  ASSERT_FALSE(no_state.is_ok());
  EXPECT_EQ(no_state.status().message(), "scontrol show job printed no JobState= in 'JobId=1 JobName=x'");
  auto bad_exit = parse_scontrol_job("JobId=1 JobState=FAILED Reason=None ExitCode=three\n");
  ASSERT_FALSE(bad_exit.is_ok());
  EXPECT_EQ(bad_exit.status().message(), "Slurm's ExitCode 'three' is not 'status:signal'");
}

TEST(SlurmState, Squeue) {
  // `squeue -h -t all -j ID -o %T|%r`, captured: running, requeued after a node failure, finished.
  auto running = parse_squeue("RUNNING|None\n");
  ASSERT_TRUE(running.is_ok() && running->has_value());
  EXPECT_EQ((*running)->phase, Phase::kRunning);
  EXPECT_EQ((*running)->describe(), "running");
  auto requeued = parse_squeue("PENDING|BeginTime\n");
  ASSERT_TRUE(requeued.is_ok() && requeued->has_value());
  EXPECT_EQ((*requeued)->phase, Phase::kPending);
  auto oom = parse_squeue("OUT_OF_MEMORY|OutOfMemory\n");
  ASSERT_TRUE(oom.is_ok() && oom->has_value());
  EXPECT_EQ((*oom)->cause, Cause::kOutOfMemory);
  auto gone = parse_squeue("");  // the controller has forgotten it
  ASSERT_TRUE(gone.is_ok());
  EXPECT_FALSE(gone->has_value());
  EXPECT_FALSE(parse_squeue("RUNNING\n").is_ok());
  EXPECT_EQ(squeue_argv("7"), (std::vector<std::string>{"squeue", "-h", "-t", "all", "-j", "7", "-o", "%T|%r"}));
}

TEST(SlurmState, Sacct) {
  // `sacct -n -P -X -j ID -o State,ExitCode,Reason` on a cluster with slurmdbd.
  auto cancelled = parse_sacct("CANCELLED by 1000|0:15|None\n");
  ASSERT_TRUE(cancelled.is_ok() && cancelled->has_value()) << cancelled.status().message();
  EXPECT_EQ((*cancelled)->state, "CANCELLED");
  EXPECT_EQ((*cancelled)->cause, Cause::kCancelled);
  EXPECT_EQ((*cancelled)->signal, 15);
  auto failed = parse_sacct("FAILED|3:0|NonZeroExitCode\n");
  ASSERT_TRUE(failed.is_ok() && failed->has_value());
  EXPECT_EQ((*failed)->exit_code, 3);
  auto requeued = parse_sacct("NODE_FAIL|0:0|None\nCOMPLETED|0:0|None\n");  // one line per attempt
  ASSERT_TRUE(requeued.is_ok() && requeued->has_value());
  EXPECT_EQ((*requeued)->cause, Cause::kNone);
  auto none = parse_sacct("");
  ASSERT_TRUE(none.is_ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_FALSE(parse_sacct("FAILED|3:0\n").is_ok());
}

TEST(SlurmState, UnknownStateIsKeptRaw) {
  auto job = slurm_job_state("UPDATED_IN_SLURM_30", "None", "0:0");
  ASSERT_TRUE(job.is_ok());
  EXPECT_EQ(job->phase, Phase::kUnknown);
  EXPECT_EQ(job->describe(), "in Slurm state 'UPDATED_IN_SLURM_30', which sdstack does not know");
}

TEST(SlurmState, FailureWithoutStatusOrSignal) {
  auto job = slurm_job_state("FAILED", "JobLaunchFailure", "0:0");
  ASSERT_TRUE(job.is_ok());
  EXPECT_EQ(job->cause, Cause::kFailed);
  EXPECT_EQ(job->describe(), "failed (Slurm's reason: JobLaunchFailure)");
}

TEST(SlurmState, QueriesScontrolThenSacct) {
  std::vector<SlurmStateQuery> order = state_query_order("9");
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0].argv, (std::vector<std::string>{"scontrol", "show", "job", "-o", "9"}));
  EXPECT_EQ(order[1].argv, (std::vector<std::string>{"sacct", "-n", "-P", "-X", "-j", "9", "-o", "State,ExitCode,Reason"}));

  // The controller forgot the job; accounting has it.
  std::vector<std::vector<std::string>> asked;
  auto forgotten = [&](const std::vector<std::string>& argv) -> base::Result<base::ProcessOutput> {
    asked.push_back(argv);
    if (argv[0] == "scontrol") return base::ProcessOutput{1, "", "slurm_load_jobs error: Invalid job id specified\n"};
    return base::ProcessOutput{0, "TIMEOUT|0:0|TimeLimit\n", ""};
  };
  auto job = query_slurm_job_state("9", forgotten);
  ASSERT_TRUE(job.is_ok()) << job.status().message();
  EXPECT_EQ(job->cause, Cause::kTimeout);
  EXPECT_EQ(asked.size(), 2u);

  // Neither knows it: the captured errors of the test cluster, which has no accounting.
  auto nobody = [](const std::vector<std::string>& argv) -> base::Result<base::ProcessOutput> {
    if (argv[0] == "scontrol") return base::ProcessOutput{1, "", "slurm_load_jobs error: Invalid job id specified\n"};
    return base::ProcessOutput{1, "", "Slurm accounting storage is disabled\n"};
  };
  auto unknown = query_slurm_job_state("9", nobody);
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_EQ(unknown.status().code(), base::StatusCode::kNotFound);
  EXPECT_EQ(unknown.status().message(),
            "Slurm job 9 is not known to the cluster any more: `scontrol show job -o 9` exited 1: slurm_load_jobs "
            "error: Invalid job id specified; `sacct -n -P -X -j 9 -o State,ExitCode,Reason` exited 1: Slurm "
            "accounting storage is disabled (its record is gone; a cluster with accounting (slurmdbd) keeps it for "
            "sacct)");

  // A runner that can't reach the login host: its error as it is, nothing more asked.
  int calls = 0;
  auto unreachable = [&](const std::vector<std::string>&) -> base::Result<base::ProcessOutput> {
    ++calls;
    return base::io_error("login.cluster: connection refused");
  };
  auto lost = query_slurm_job_state("9", unreachable);
  ASSERT_FALSE(lost.is_ok());
  EXPECT_EQ(lost.status().message(), "login.cluster: connection refused");
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace sdstack::flow

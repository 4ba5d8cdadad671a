// Remote runs: a submitted run (local_run.h) whose job goes to an offer (offers.h), an SSH host or
// a Slurm partition, instead of this machine. The local supervisor stays the run's owner: it ships
// sdstack (the binary and the libraries it loads, once per host), the working dir (the project
// snapshot and the deps' artifacts) and a RemotePlan (agent.h) to the host, starts sdstack's agent
// there (detached from the SSH connection, or as a Slurm batch job), copies the remote log into the
// local one as it grows, passes stops on (SIGTERM / scancel), and when the job ends fetches its
// artifacts into the local store (or leaves them in the S3 store, which holds them then). A host
// that stops answering for `lost_after` is lost; an infrastructure failure (a lost host, a node
// failure) is retried on the next offer that fits when the run was submitted with --retry.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "flow/artifact_store.h"
#include "flow/config.h"
#include "flow/local_run.h"
#include "flow/offers.h"
#include "flow/remote_host.h"
#include "flow/s3.h"

namespace sdstack::flow {

// $SDSTACK_HOME/config.yaml.
std::string config_path(const StoreLayout& layout);

// The host that runs an offer's commands: the SSH host, or a Slurm cluster's login.
RemoteHost offer_host(const Config& config, const Offer& offer, const StoreLayout& layout);

// Puts sdstack's bundle (this binary, the shared libraries it loads but the C library's, and a
// wrapper that finds them) on `host` under `base_dir`, unless it is there already, and returns the
// wrapper's path there. `base_dir` is absolute, or relative to the login's home.
base::Result<std::string> install_agent(const RemoteHost& host, const std::string& base_dir,
                                        const StoreLayout& layout);

// Contacts each host of SSH backend `name` (or of every SSH backend when "") and records what it
// has in `config` (CPUs, memory, GPUs, shared memory, as the agent detects them there).
base::Status detect_ssh_hosts(Config& config, const std::string& name, const StoreLayout& layout);
// Reads a Slurm backend's partitions with sinfo, keeping the prices already configured.
base::Status detect_slurm_partitions(BackendConfig& backend, const StoreLayout& layout);

// The S3 client of the config's artifact store, with its credentials.
base::Result<std::unique_ptr<S3Client>> artifact_s3_client(const Config& config);

// Makes key's artifacts available in the local store: already there, or pulled from the S3 store
// when the config has one that holds them. NotFound when neither has them.
base::Status ensure_local_artifacts(const StoreLayout& layout, ArtifactStore& local, const std::string& key);

// The supervisor's body for a remote run (called by supervise() when the plan has offers).
int supervise_remote(const StoreLayout& layout, const std::string& project_dir, const std::string& run,
                     const JobPlan& plan);

}  // namespace sdstack::flow

// The user's engines: ~/.sdstack/config.yaml (or $SDSTACK_HOME/config.yaml), written by
// `sdstack config` and read by `sdstack offers` and `sdstack run --remote`.
//
//   backends:
//     - name: lab                  # an SSH fleet: each host is an offer
//       type: ssh
//       user: root                 # defaults for the hosts below; each host may override them
//       port: 22
//       identity_file: ~/.ssh/id_ed25519
//       jump_host: me@bastion:22   # optional (ssh -J)
//       dir: .sdstack-remote       # where runs live on the host (relative: to the login's HOME)
//       hosts:
//         - host: 10.0.0.2
//           price: 0.5             # per hour; optional (0: free, chosen first)
//           resources: {cpus: 16, memory: 64GB, shm: 32GB, gpus: [{name: NVIDIA A100, memory: 80GB}]}
//     - name: cluster              # a Slurm cluster: each partition is an offer
//       type: slurm
//       login: local               # or user@host[:port] (with identity_file, jump_host as above)
//       dir: /shared/sdstack       # on a file system the login host and the nodes share
//       account: proj1             # optional; qos too
//       slurm_conf: /etc/slurm/slurm.conf   # optional: SLURM_CONF for the Slurm commands
//       partitions:
//         - {name: gpu, cpus: 64, memory: 512GB, gpus: 8, gpu_name: a100, price: 2.0}
//   artifacts:                     # optional: an S3-compatible store for artifacts
//     type: s3
//     endpoint: https://s3.eu-west-1.amazonaws.com
//     region: eu-west-1
//     bucket: my-artifacts
//     prefix: sdstack/
//     addressing: path             # or virtual (bucket.host)
//     credentials: env             # AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a file:
//     # credentials_file: ~/.aws/credentials
//     # profile: default
//   lost_after: 60s                # a host that does not answer this long is lost
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "flow/machine.h"

namespace sdstack::flow {

// How to reach a machine over SSH ("" / 0: ssh's own default).
struct SshLogin {
  std::string host;
  int port = 0;
  std::string user;
  std::string identity_file;
  std::string jump_host;
  // "user@host:port" as people write it ("host" alone when user and port are unset).
  std::string display() const;
};

struct SshHostConfig {
  SshLogin login;
  double price = 0;  // per hour
  std::optional<MachineResources> resources;  // detected on first contact
};

struct SlurmPartitionConfig {
  std::string name;
  int cpus = 0;                 // per node
  int64_t memory_bytes = 0;     // per node
  int gpus = 0;                 // per node
  std::string gpu_name;
  int64_t gpu_memory_bytes = 0;
  double price = 0;
};

struct BackendConfig {
  enum class Type { kSsh, kSlurm };
  std::string name;
  Type type = Type::kSsh;
  std::string dir;  // where runs live on the remote ("" : the default for the type)
  // ssh
  std::vector<SshHostConfig> hosts;
  // slurm
  bool local_login = true;  // run sbatch/squeue here; else over SSH to `login`
  SshLogin login;
  std::string account, qos, slurm_conf;
  std::vector<SlurmPartitionConfig> partitions;
};

struct S3StoreConfig {
  std::string endpoint, region = "us-east-1", bucket, prefix;
  bool path_style = true;
  std::string credentials_file, profile;  // empty file: the environment
};

struct Config {
  std::vector<BackendConfig> backends;
  std::optional<S3StoreConfig> artifacts;
  int lost_after_seconds = 60;
  const BackendConfig* find(const std::string& name) const;
  BackendConfig* find(const std::string& name);
};

// "ssh", "slurm".
const char* backend_type_name(BackendConfig::Type type);

// The config at `path`; an empty Config when the file does not exist. Errors read
// "path:line:column: what (hint)".
base::Result<Config> load_config(const std::string& path);
// Parses config text; `file` names it in messages.
base::Result<Config> parse_config(const std::string& text, const std::string& file);
// The config as YAML, in the form load_config reads.
std::string config_to_yaml(const Config& config);
// Writes it atomically (0600: it may name credential files and hosts).
base::Status save_config(const Config& config, const std::string& path);

// "user@host:port", "user@host", "host:port" or "host" → an SshLogin; InvalidArgument otherwise.
base::Result<SshLogin> parse_login(const std::string& text);

// MachineResources <-> JSON-compatible YAML/JSON text pieces used by the agent and the config.
std::string machine_to_json(const MachineResources& machine);
base::Result<MachineResources> machine_from_json(const std::string& text);

}  // namespace sdstack::flow

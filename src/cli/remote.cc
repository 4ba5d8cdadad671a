// `sdstack config` (the remote engines and the S3 artifact store), `sdstack offers`, and the
// hidden `sdstack __agent` that runs on a remote host (flow/agent.h).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <sstream>

#include "base/strings.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "flow/agent.h"
#include "flow/offers.h"
#include "flow/remote_run.h"

namespace sdstack::cli {
namespace {

using flow::BackendConfig;
using flow::Config;

struct ConfigFile {
  flow::StoreLayout layout = flow::StoreLayout::from_environment();
  std::string path = flow::config_path(layout);
};

void print_backend(const BackendConfig& backend) {
  if (backend.type == BackendConfig::Type::kSsh) {
    std::printf("%s (ssh)%s\n", backend.name.c_str(), backend.dir.empty() ? "" : (", dir " + backend.dir).c_str());
    for (const flow::SshHostConfig& host : backend.hosts) {
      std::printf("  %-28s %-10s %s\n", host.login.display().c_str(), flow::format_price(host.price).c_str(),
                  host.resources ? flow::describe_machine(*host.resources).c_str() : "not detected yet");
    }
    return;
  }
  std::printf("%s (slurm, login %s)%s%s\n", backend.name.c_str(),
              backend.local_login ? "this machine" : backend.login.display().c_str(),
              backend.account.empty() ? "" : (", account " + backend.account).c_str(),
              backend.qos.empty() ? "" : (", qos " + backend.qos).c_str());
  for (const flow::SlurmPartitionConfig& partition : backend.partitions) {
    flow::MachineResources node;
    node.cpus = partition.cpus;
    node.memory_bytes = partition.memory_bytes;
    for (int g = 0; g < partition.gpus; ++g) node.gpus.push_back({partition.gpu_name, partition.gpu_memory_bytes});
    std::printf("  partition %-18s %-10s %s per node\n", partition.name.c_str(),
                flow::format_price(partition.price).c_str(), flow::describe_machine(node).c_str());
  }
}

void print_config(const Config& config, const std::string& path) {
  std::printf("# %s\n", path.c_str());
  if (config.backends.empty()) std::printf("no backends: add one with `sdstack config ssh` or `sdstack config slurm`\n");
  for (const BackendConfig& backend : config.backends) print_backend(backend);
  if (config.artifacts) {
    std::printf("artifacts: s3 %s bucket %s%s (%s)\n", config.artifacts->endpoint.c_str(),
                config.artifacts->bucket.c_str(),
                config.artifacts->prefix.empty() ? "" : (" prefix " + config.artifacts->prefix).c_str(),
                config.artifacts->credentials_file.empty() ? "credentials from the environment"
                                                           : ("credentials from " + config.artifacts->credentials_file).c_str());
  } else {
    std::printf("artifacts: the local store (no S3 store configured)\n");
  }
  std::printf("lost_after: %ds\n", config.lost_after_seconds);
}

// Replaces the backend of the same name, or adds it.
void put_backend(Config& config, BackendConfig backend) {
  if (BackendConfig* existing = config.find(backend.name)) {
    *existing = std::move(backend);
  } else {
    config.backends.push_back(std::move(backend));
  }
}

std::string ask(const std::string& question, const std::string& fallback = "") {
  std::fprintf(stderr, "%s%s: ", question.c_str(), fallback.empty() ? "" : (" [" + fallback + "]").c_str());
  std::string answer;
  if (!std::getline(std::cin, answer)) return fallback;
  return answer.empty() ? fallback : answer;
}

// `sdstack config` on a terminal with nothing else: asks for one backend (or the S3 store).
base::Status interactive(Config& config, const ConfigFile& file) {
  std::string kind = ask("add what: ssh (hosts), slurm (a cluster) or s3 (the artifact store)", "ssh");
  if (kind == "ssh") {
    BackendConfig backend;
    backend.type = BackendConfig::Type::kSsh;
    backend.name = ask("backend name", "hosts");
    std::istringstream words(ask("hosts (user@host[:port], separated by spaces)"));
    for (std::string host; words >> host;) {
      SD_ASSIGN_OR_RETURN(flow::SshLogin login, flow::parse_login(host));
      login.identity_file = ask("identity file for " + host, "");
      flow::SshHostConfig config_host{login, std::atof(ask("price per hour of " + host, "0").c_str()), std::nullopt};
      backend.hosts.push_back(config_host);
    }
    if (backend.hosts.empty()) return base::invalid_argument("no hosts given");
    put_backend(config, backend);
    return flow::detect_ssh_hosts(config, backend.name, file.layout);
  }
  if (kind == "slurm") {
    BackendConfig backend;
    backend.type = BackendConfig::Type::kSlurm;
    backend.name = ask("backend name", "cluster");
    std::string login = ask("login host (user@host[:port], or local)", "local");
    backend.local_login = login == "local";
    if (!backend.local_login) {
      SD_ASSIGN_OR_RETURN(backend.login, flow::parse_login(login));
    }
    backend.account = ask("account (empty: none)");
    backend.dir = ask("folder for runs on the cluster's shared file system", ".sdstack-remote");
    SD_RETURN_IF_ERROR(flow::detect_slurm_partitions(backend, file.layout));
    put_backend(config, backend);
    return base::Status::ok();
  }
  if (kind == "s3") {
    flow::S3StoreConfig s3;
    s3.endpoint = ask("endpoint (https://...)");
    s3.region = ask("region", "us-east-1");
    s3.bucket = ask("bucket");
    s3.credentials_file = ask("credentials file (empty: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)");
    config.artifacts = s3;
    return base::Status::ok();
  }
  return base::invalid_argument("answer ssh, slurm or s3");
}

}  // namespace

int run_config(int argc, char** argv) {
  CLI::App app("Configure remote engines (SSH hosts, Slurm clusters) and the S3 artifact store, kept in\n"
               "$SDSTACK_HOME/config.yaml (~/.sdstack/config.yaml). Without a subcommand on a terminal it asks.",
               argv[0]);
  app.require_subcommand(0, 1);
  ConfigFile file;

  CLI::App* show = app.add_subcommand("show", "Print the configured engines and store");

  CLI::App* ssh = app.add_subcommand("ssh", "Add (or replace) an SSH backend: a fleet of hosts; detects what each has");
  std::string name;
  std::vector<std::string> hosts;
  std::vector<double> prices;
  std::string user, identity, jump, dir;
  int port = 0;
  bool no_detect = false;
  ssh->add_option("name", name, "The backend's name")->required();
  ssh->add_option("--host", hosts, "A host: address, user@address or user@address:port (repeatable)")->required();
  ssh->add_option("--price", prices, "Price per hour: one for every host, or one per --host in order");
  ssh->add_option("--user", user, "Login user (default: ssh's)");
  ssh->add_option("--port", port, "SSH port (default 22)");
  ssh->add_option("-i,--identity-file", identity, "Private key file");
  ssh->add_option("-J,--jump-host", jump, "Jump host (ssh -J), e.g. me@bastion:22");
  ssh->add_option("--dir", dir, "Where runs live on the hosts (default ~/.sdstack-remote)");
  ssh->add_flag("--no-detect", no_detect, "Don't contact the hosts now (their resources are detected on first use)");

  CLI::App* slurm = app.add_subcommand("slurm", "Add (or replace) a Slurm cluster; reads its partitions with sinfo");
  std::string login = "local", account, qos, slurm_conf;
  double price = 0;
  slurm->add_option("name", name, "The backend's name")->required();
  slurm->add_option("--login", login, "Where sbatch runs: local, or user@host[:port] over SSH")->capture_default_str();
  slurm->add_option("-i,--identity-file", identity, "Private key file for the login host");
  slurm->add_option("-J,--jump-host", jump, "Jump host for the login host");
  slurm->add_option("--account", account, "Slurm account (sbatch -A)");
  slurm->add_option("--qos", qos, "Quality of service (sbatch -q)");
  slurm->add_option("--dir", dir, "Where runs live: a folder the login host and the nodes share (default ~/.sdstack-remote)");
  slurm->add_option("--slurm-conf", slurm_conf, "SLURM_CONF for the Slurm commands (default: Slurm's own)");
  slurm->add_option("--price", price, "Price per node-hour of every partition");

  CLI::App* s3 = app.add_subcommand("s3", "Use an S3-compatible store for remote runs' artifacts");
  flow::S3StoreConfig store;
  bool virtual_host = false, no_check = false;
  s3->add_option("--endpoint", store.endpoint, "http(s)://host[:port] of the S3 API")->required();
  s3->add_option("--bucket", store.bucket, "The bucket (created if missing)")->required();
  s3->add_option("--region", store.region, "Region for request signing")->capture_default_str();
  s3->add_option("--prefix", store.prefix, "Key prefix inside the bucket, e.g. sdstack/");
  s3->add_flag("--virtual-host", virtual_host, "Address the bucket as bucket.host (default: host/bucket)");
  s3->add_option("--credentials-file", store.credentials_file,
                 "An AWS-style credentials file (default: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)");
  s3->add_option("--profile", store.profile, "The profile in the credentials file (default: default)");
  s3->add_flag("--no-check", no_check, "Don't check the store now");

  CLI::App* detect = app.add_subcommand("detect", "Contact SSH hosts / Slurm again and record what they have");
  detect->add_option("name", name, "The backend (default: all)");
  CLI::App* remove = app.add_subcommand("remove", "Remove a backend");
  remove->add_option("name", name, "The backend")->required();
  CLI::App* lost = app.add_subcommand("lost-after", "How long a silent host may stay silent before it is lost");
  std::string duration;
  lost->add_option("duration", duration, "e.g. 30s, 2m")->required();
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;

  auto config = flow::load_config(file.path);
  if (!config.is_ok()) return report(config.status());
  base::Status done = base::Status::ok();
  if (show->parsed()) {
    print_config(*config, file.path);
    return 0;
  } else if (ssh->parsed()) {
    if (!prices.empty() && prices.size() != 1 && prices.size() != hosts.size()) {
      return report(base::invalid_argument("give one --price for all hosts or one per --host (" +
                                           std::to_string(hosts.size()) + " hosts, " +
                                           std::to_string(prices.size()) + " prices)"));
    }
    BackendConfig backend;
    backend.name = name;
    backend.type = BackendConfig::Type::kSsh;
    backend.dir = dir;
    for (size_t i = 0; i < hosts.size(); ++i) {
      auto parsed = flow::parse_login(hosts[i]);
      if (!parsed.is_ok()) return report(parsed.status());
      if (parsed->user.empty()) parsed->user = user;
      if (parsed->port == 0) parsed->port = port;
      parsed->identity_file = identity;
      parsed->jump_host = jump;
      backend.hosts.push_back({*parsed, prices.empty() ? 0 : prices[prices.size() == 1 ? 0 : i], std::nullopt});
    }
    put_backend(*config, backend);
    if (!no_detect) done = flow::detect_ssh_hosts(*config, name, file.layout);
  } else if (slurm->parsed()) {
    BackendConfig backend;
    backend.name = name;
    backend.type = BackendConfig::Type::kSlurm;
    backend.dir = dir;
    backend.local_login = login == "local";
    if (!backend.local_login) {
      auto parsed = flow::parse_login(login);
      if (!parsed.is_ok()) return report(parsed.status());
      backend.login = *parsed;
      backend.login.identity_file = identity;
      backend.login.jump_host = jump;
    }
    backend.account = account;
    backend.qos = qos;
    backend.slurm_conf = slurm_conf;
    done = flow::detect_slurm_partitions(backend, file.layout);
    for (flow::SlurmPartitionConfig& partition : backend.partitions) partition.price = price;
    put_backend(*config, backend);
  } else if (s3->parsed()) {
    store.path_style = !virtual_host;
    config->artifacts = store;
    if (!no_check) {
      auto client = flow::artifact_s3_client(*config);
      done = client.is_ok() ? (*client)->create_bucket_if_missing() : client.status();
    }
  } else if (detect->parsed()) {
    bool any = false;
    for (BackendConfig& backend : config->backends) {
      if (!name.empty() && backend.name != name) continue;
      any = true;
      done = backend.type == BackendConfig::Type::kSsh ? flow::detect_ssh_hosts(*config, backend.name, file.layout)
                                                       : flow::detect_slurm_partitions(backend, file.layout);
      if (!done.is_ok()) break;
    }
    if (!any) done = base::not_found(name.empty() ? "no backends to detect" : "no backend '" + name + "'");
  } else if (remove->parsed()) {
    auto before = config->backends.size();
    std::erase_if(config->backends, [&](const BackendConfig& backend) { return backend.name == name; });
    if (config->backends.size() == before) return report(base::not_found("no backend '" + name + "' in " + file.path));
  } else if (lost->parsed()) {
    auto parsed = flow::parse_config("lost_after: " + duration, "lost-after");
    if (!parsed.is_ok()) return report(parsed.status());
    config->lost_after_seconds = parsed->lost_after_seconds;
  } else if (isatty(STDIN_FILENO)) {
    done = interactive(*config, file);
  } else {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  }
  if (!done.is_ok()) return report(done);
  if (base::Status saved = flow::save_config(*config, file.path); !saved.is_ok()) return report(saved);
  print_config(*config, file.path);
  return 0;
}

int run_offers(int argc, char** argv) {
  CLI::App app("List where a remote run could go (`sdstack run --remote`), cheapest first: each SSH host and\n"
               "each Slurm partition of `sdstack config` that gives what is asked for.",
               argv[0]);
  int cpu = 0, gpu = 0;
  std::string memory, gpu_name, gpu_memory, backend;
  bool all = false;
  app.add_option("--cpu", cpu, "CPUs");
  app.add_option("--memory", memory, "Memory (16GB, 512MiB, ...)");
  app.add_option("--gpu", gpu, "GPU count");
  app.add_option("--gpu-name", gpu_name, "GPU model (A100, H100, ...)");
  app.add_option("--gpu-memory", gpu_memory, "GPU memory");
  app.add_option("--backend", backend, "Only this backend's offers");
  app.add_flag("-a,--all", all, "Also list the offers that don't fit, with what they lack");
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  flow::Resources wanted;
  wanted.cpu = cpu;
  wanted.gpu.count = gpu;
  wanted.gpu.name = gpu_name;
  for (auto [text, target] : {std::pair{&memory, &wanted.memory_bytes}, std::pair{&gpu_memory, &wanted.gpu.memory_bytes}}) {
    if (text->empty()) continue;
    auto size = flow::parse_size(*text);
    if (!size.is_ok()) return report(size.status());
    *target = *size;
  }
  wanted = flow::apply_overrides(wanted, {});
  ConfigFile file;
  auto config = flow::load_config(file.path);
  if (!config.is_ok()) return report(config.status());
  flow::OfferMatch match = flow::match_offers(flow::list_offers(*config), wanted, backend);
  if (match.fitting.empty() && !all) return report(flow::no_offer_error(wanted, match, backend));
  std::printf("%-32s %-6s %-10s %s\n", "OFFER", "TYPE", "PRICE", "RESOURCES");
  for (const flow::Offer& offer : match.fitting) {
    std::printf("%-32s %-6s %-10s %s\n", offer.id().c_str(), flow::backend_type_name(offer.type),
                flow::format_price(offer.price).c_str(), flow::describe_machine(offer.resources).c_str());
  }
  if (all) {
    for (const auto& [offer, missing] : match.unfit) {
      std::printf("%-32s %-6s %-10s lacks %s\n", offer.id().c_str(), flow::backend_type_name(offer.type),
                  flow::format_price(offer.price).c_str(), base::join(missing, "; ").c_str());
    }
  }
  return 0;
}

int run_agent(int argc, char** argv) {
  return flow::agent_main(std::vector<std::string>(argv + 1, argv + argc));
}

}  // namespace sdstack::cli

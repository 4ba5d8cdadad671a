// Offers from the config and the choice among them (see offers.h).
#include "flow/offers.h"

#include <algorithm>
#include <cstdio>

#include "base/strings.h"

namespace sdstack::flow {

std::vector<Offer> list_offers(const Config& config) {
  std::vector<Offer> offers;
  for (const BackendConfig& backend : config.backends) {
    if (backend.type == BackendConfig::Type::kSsh) {
      for (size_t i = 0; i < backend.hosts.size(); ++i) {
        const SshHostConfig& host = backend.hosts[i];
        // The port tells hosts behind one address apart (forwarded ports).
        std::string target = host.login.host;
        if (host.login.port != 0 && host.login.port != 22) target.append(":").append(std::to_string(host.login.port));
        Offer offer{backend.name, backend.type, target, i, {}, host.price, host.resources.has_value()};
        if (host.resources) offer.resources = *host.resources;
        offers.push_back(offer);
      }
    } else {
      for (size_t i = 0; i < backend.partitions.size(); ++i) {
        const SlurmPartitionConfig& partition = backend.partitions[i];
        Offer offer{backend.name, backend.type, partition.name, i, {}, partition.price, true};
        offer.resources.cpus = partition.cpus;
        offer.resources.memory_bytes = partition.memory_bytes;
        for (int g = 0; g < partition.gpus; ++g) {
          offer.resources.gpus.push_back({partition.gpu_name, partition.gpu_memory_bytes});
        }
        offers.push_back(offer);
      }
    }
  }
  std::stable_sort(offers.begin(), offers.end(), [](const Offer& a, const Offer& b) {
    if (a.price != b.price) return a.price < b.price;
    if (a.resources.cpus != b.resources.cpus) return a.resources.cpus < b.resources.cpus;
    if (a.resources.memory_bytes != b.resources.memory_bytes) return a.resources.memory_bytes < b.resources.memory_bytes;
    return a.id() < b.id();
  });
  return offers;
}

OfferMatch match_offers(const std::vector<Offer>& offers, const Resources& wanted, const std::string& only) {
  OfferMatch match;
  for (const Offer& offer : offers) {
    if (!only.empty() && offer.backend != only) continue;
    std::vector<std::string> missing;
    if (!offer.detected) {
      missing.push_back("its resources are not known yet (`sdstack config detect " + offer.backend + "`)");
    } else {
      missing = missing_resources(wanted, offer.resources);
      // A partition's shared memory is the node's business; Slurm has no request for it.
      if (offer.type == BackendConfig::Type::kSlurm) {
        std::erase_if(missing, [](const std::string& line) { return line.rfind("shared memory", 0) == 0; });
      }
      for (std::string& line : missing) {
        for (size_t at; (at = line.find("this machine has")) != std::string::npos;) line.replace(at, 16, "it has");
      }
    }
    if (missing.empty()) {
      match.fitting.push_back(offer);
    } else {
      match.unfit.emplace_back(offer, missing);
    }
  }
  return match;
}

base::Status no_offer_error(const Resources& wanted, const OfferMatch& match, const std::string& only) {
  if (match.unfit.empty()) {
    if (!only.empty()) {
      return base::not_found("there is no backend '" + only + "' in the config: see `sdstack config show`");
    }
    return base::not_found(
        "no remote engines are configured: add SSH hosts with `sdstack config ssh NAME --host ADDRESS` or a Slurm "
        "cluster with `sdstack config slurm NAME`");
  }
  // The nearest offers: those that lack the fewest things.
  auto unfit = match.unfit;
  std::stable_sort(unfit.begin(), unfit.end(),
                   [](const auto& a, const auto& b) { return a.second.size() < b.second.size(); });
  std::string message = "no offer " + std::string(only.empty() ? "" : "of backend '" + only + "' ") +
                        "can give what this run asks for (" + describe_request(wanted) + "); the nearest:";
  for (size_t i = 0; i < unfit.size() && i < 3; ++i) {
    const auto& [offer, missing] = unfit[i];
    message.append("\n  ").append(offer.id() + " (" +
                                   (offer.detected ? describe_machine(offer.resources) : "not detected") + ", " +
                                   format_price(offer.price) + ") lacks " + base::join(missing, "; "));
  }
  message += "\nlower the request (--cpu, --memory, --gpu, ...) or add an engine that has it (`sdstack config`)";
  return base::not_found(message);
}

std::string describe_machine(const MachineResources& machine) {
  std::string text = std::to_string(machine.cpus) + (machine.cpus == 1 ? " CPU, " : " CPUs, ") +
                     format_bytes(machine.memory_bytes);
  if (!machine.gpus.empty()) {
    text.append(", ").append(std::to_string(machine.gpus.size()) + (machine.gpus.size() == 1 ? " GPU" : " GPUs"));
    if (!machine.gpus[0].name.empty()) text.append(" ").append(machine.gpus[0].name);
    if (machine.gpus[0].memory_bytes > 0) text.append(" ").append(format_bytes(machine.gpus[0].memory_bytes));
  }
  return text;
}

std::string describe_request(const Resources& wanted) {
  std::vector<std::string> parts;
  if (wanted.cpu > 0) parts.push_back(std::to_string(wanted.cpu) + (wanted.cpu == 1 ? " CPU" : " CPUs"));
  if (wanted.memory_bytes > 0) parts.push_back(format_bytes(wanted.memory_bytes));
  if (wanted.gpu.count > 0) {
    std::string gpu = std::to_string(wanted.gpu.count) + (wanted.gpu.count == 1 ? " GPU" : " GPUs");
    if (!wanted.gpu.name.empty()) gpu.append(" ").append(wanted.gpu.name);
    if (wanted.gpu.memory_bytes > 0) gpu.append(" ").append(format_bytes(wanted.gpu.memory_bytes));
    parts.push_back(gpu);
  }
  if (wanted.shm_size_bytes > 0) parts.push_back("shm " + format_bytes(wanted.shm_size_bytes));
  return parts.empty() ? "anything" : base::join(parts, ", ");
}

std::string format_price(double price) {
  if (price <= 0) return "free";
  char text[32];
  std::snprintf(text, sizeof(text), "$%.2f/h", price);
  return text;
}

}  // namespace sdstack::flow

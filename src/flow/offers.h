// Offers: the places a remote run could go, one per SSH host and per Slurm partition of the
// config, with what each can give and its price; the choice of the cheapest that fits.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "flow/config.h"
#include "flow/machine.h"
#include "flow/spec.h"

namespace sdstack::flow {

struct Offer {
  std::string backend;
  BackendConfig::Type type = BackendConfig::Type::kSsh;
  std::string target;           // the host's address, or the partition's name
  size_t index = 0;             // of the host / partition in its backend
  MachineResources resources;   // a partition's: one node's
  double price = 0;             // per hour
  bool detected = true;         // false: an SSH host whose resources are not known yet
  std::string id() const { return backend + "/" + target; }
};

// Every offer of the config, cheapest first (ties: fewer CPUs, then less memory, then by id, so
// the smallest machine that fits is taken).
std::vector<Offer> list_offers(const Config& config);

struct OfferMatch {
  std::vector<Offer> fitting;                                     // cheapest first
  std::vector<std::pair<Offer, std::vector<std::string>>> unfit;  // and what each lacks
};
// The offers that give `wanted`, restricted to backend `only` when it is not "".
OfferMatch match_offers(const std::vector<Offer>& offers, const Resources& wanted, const std::string& only = "");

// The error when nothing fits: the request, and the nearest offers with what each lacks.
base::Status no_offer_error(const Resources& wanted, const OfferMatch& match, const std::string& only);

// "2 CPUs, 24.0 GB, 1 GPU NVIDIA A100 80.0 GB, shm 12.0 GB".
std::string describe_machine(const MachineResources& machine);
// "2 CPUs, 16.0 GB, 1 GPU A100": what a workflow asks for ("anything" when it asks nothing).
std::string describe_request(const Resources& wanted);
// "$0.50/h", or "free".
std::string format_price(double price);

}  // namespace sdstack::flow

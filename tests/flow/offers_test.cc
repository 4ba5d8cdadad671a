// Offers: cheapest first, what fits, and the error that shows the nearest offers.
#include "flow/offers.h"

#include <gtest/gtest.h>

namespace sdstack::flow {
namespace {

Config two_hosts_and_a_cluster() {
  Config config;
  BackendConfig lab;
  lab.name = "lab";
  MachineResources small{1, 3LL << 30, {}, 1LL << 30};
  MachineResources big{2, 24LL << 30, {}, 12LL << 30};
  lab.hosts = {{{"10.0.0.3", 0, "", "", ""}, 1.0, big}, {{"10.0.0.2", 0, "", "", ""}, 0.5, small}};
  BackendConfig cluster;
  cluster.name = "hpc";
  cluster.type = BackendConfig::Type::kSlurm;
  cluster.partitions = {{"gpu", 32, 256LL << 30, 4, "a100", 80LL << 30, 3.0}};
  config.backends = {lab, cluster};
  return config;
}

TEST(OffersTest, CheapestFirst) {
  std::vector<Offer> offers = list_offers(two_hosts_and_a_cluster());
  ASSERT_EQ(offers.size(), 3u);
  EXPECT_EQ(offers[0].id(), "lab/10.0.0.2");
  EXPECT_EQ(offers[1].id(), "lab/10.0.0.3");
  EXPECT_EQ(offers[2].id(), "hpc/gpu");
  EXPECT_EQ(offers[2].resources.gpus.size(), 4u);
}

TEST(OffersTest, TakesTheCheapestThatFits) {
  std::vector<Offer> offers = list_offers(two_hosts_and_a_cluster());
  Resources one_cpu;
  one_cpu.cpu = 1;
  EXPECT_EQ(match_offers(offers, one_cpu).fitting.front().id(), "lab/10.0.0.2");
  Resources two_cpus;
  two_cpus.cpu = 2;
  OfferMatch match = match_offers(offers, two_cpus);
  ASSERT_EQ(match.fitting.size(), 2u);
  EXPECT_EQ(match.fitting[0].id(), "lab/10.0.0.3");
  Resources gpu;
  gpu.gpu.count = 2;
  gpu.gpu.name = "A100";
  match = match_offers(offers, gpu);
  ASSERT_EQ(match.fitting.size(), 1u);
  EXPECT_EQ(match.fitting[0].id(), "hpc/gpu");
  EXPECT_TRUE(match_offers(offers, one_cpu, "hpc").fitting.front().id() == "hpc/gpu");
}

TEST(OffersTest, NothingFitsShowsTheNearest) {
  std::vector<Offer> offers = list_offers(two_hosts_and_a_cluster());
  Resources huge;
  huge.cpu = 64;
  huge.gpu.count = 1;
  OfferMatch match = match_offers(offers, huge);
  ASSERT_TRUE(match.fitting.empty());
  std::string message = no_offer_error(huge, match, "").message();
  EXPECT_EQ(message,
            "no offer can give what this run asks for (64 CPUs, 1 GPU); the nearest:\n"
            "  hpc/gpu (32 CPUs, 274.9 GB, 4 GPUs a100 85.9 GB, $3.00/h) lacks 64 CPUs (it has 32)\n"
            "  lab/10.0.0.2 (1 CPU, 3.2 GB, $0.50/h) lacks 64 CPUs (it has 1); 1 GPU (it has none)\n"
            "  lab/10.0.0.3 (2 CPUs, 25.8 GB, $1.00/h) lacks 64 CPUs (it has 2); 1 GPU (it has none)\n"
            "lower the request (--cpu, --memory, --gpu, ...) or add an engine that has it (`sdstack config`)");
  EXPECT_EQ(no_offer_error(huge, match_offers(offers, huge, "nope"), "nope").message(),
            "there is no backend 'nope' in the config: see `sdstack config show`");
  EXPECT_NE(no_offer_error(huge, match_offers({}, huge), "").message().find("no remote engines are configured"),
            std::string::npos);
}

TEST(OffersTest, UndetectedHostsNeverFit) {
  Config config;
  BackendConfig lab;
  lab.name = "lab";
  lab.hosts = {{{"h", 0, "", "", ""}, 0, std::nullopt}};
  config.backends = {lab};
  OfferMatch match = match_offers(list_offers(config), Resources{});
  ASSERT_TRUE(match.fitting.empty());
  ASSERT_EQ(match.unfit.size(), 1u);
  EXPECT_EQ(match.unfit[0].second.front(), "its resources are not known yet (`sdstack config detect lab`)");
}

}  // namespace
}  // namespace sdstack::flow

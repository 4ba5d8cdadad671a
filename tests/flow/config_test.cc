// The remote engines' config: parsing, validation errors with file:line, and the round trip.
#include "flow/config.h"

#include <gtest/gtest.h>

#include "testing/testing.h"

namespace sdstack::flow {
namespace {

constexpr const char* kFull = R"(
backends:
  - name: lab
    type: ssh
    user: root
    identity_file: /keys/id
    hosts:
      - host: 10.0.0.2
        price: 0.5
        resources: {cpus: 1, memory: 3GiB, shm: 1GB, gpus: []}
      - host: 10.0.0.3
        port: 2222
        user: me
        price: 1.25
  - name: cluster
    type: slurm
    login: admin@login.example.org:2200
    identity_file: /keys/cluster
    account: proj
    slurm_conf: /etc/slurm/test.conf
    partitions:
      - {name: gpu, cpus: 64, memory: 512GB, gpus: 8, gpu_name: a100, price: 2}
artifacts:
  type: s3
  endpoint: http://127.0.0.1:9000
  bucket: runs
  prefix: sd/
  addressing: virtual
  credentials_file: /creds
  profile: work
lost_after: 2m
)";

TEST(ConfigTest, ParsesEveryPart) {
  auto config = parse_config(kFull, "config.yaml");
  ASSERT_TRUE(config.is_ok()) << config.status().message();
  ASSERT_EQ(config->backends.size(), 2u);
  const BackendConfig& lab = config->backends[0];
  EXPECT_EQ(lab.type, BackendConfig::Type::kSsh);
  ASSERT_EQ(lab.hosts.size(), 2u);
  EXPECT_EQ(lab.hosts[0].login.user, "root");
  EXPECT_EQ(lab.hosts[0].login.identity_file, "/keys/id");
  EXPECT_DOUBLE_EQ(lab.hosts[0].price, 0.5);
  ASSERT_TRUE(lab.hosts[0].resources.has_value());
  EXPECT_EQ(lab.hosts[0].resources->cpus, 1);
  EXPECT_EQ(lab.hosts[0].resources->memory_bytes, 3LL << 30);
  EXPECT_EQ(lab.hosts[1].login.display(), "me@10.0.0.3:2222");
  EXPECT_FALSE(lab.hosts[1].resources.has_value());
  const BackendConfig& cluster = config->backends[1];
  EXPECT_EQ(cluster.type, BackendConfig::Type::kSlurm);
  EXPECT_FALSE(cluster.local_login);
  EXPECT_EQ(cluster.login.display(), "admin@login.example.org:2200");
  EXPECT_EQ(cluster.login.identity_file, "/keys/cluster");
  ASSERT_EQ(cluster.partitions.size(), 1u);
  EXPECT_EQ(cluster.partitions[0].gpus, 8);
  EXPECT_EQ(cluster.partitions[0].gpu_name, "a100");
  ASSERT_TRUE(config->artifacts.has_value());
  EXPECT_FALSE(config->artifacts->path_style);
  EXPECT_EQ(config->artifacts->profile, "work");
  EXPECT_EQ(config->lost_after_seconds, 120);
}

TEST(ConfigTest, WritesWhatItReads) {
  auto config = parse_config(kFull, "config.yaml");
  ASSERT_TRUE(config.is_ok());
  std::string yaml = config_to_yaml(*config);
  auto again = parse_config(yaml, "written.yaml");
  ASSERT_TRUE(again.is_ok()) << again.status().message() << "\n" << yaml;
  EXPECT_EQ(config_to_yaml(*again), yaml);
  EXPECT_EQ(again->backends[0].hosts[0].resources->memory_bytes, 3LL << 30);
  EXPECT_EQ(again->backends[1].login.identity_file, "/keys/cluster");
}

TEST(ConfigTest, SavesPrivately) {
  testing::TempDir dir;
  auto config = parse_config(kFull, "config.yaml");
  ASSERT_TRUE(config.is_ok());
  ASSERT_TRUE(save_config(*config, dir.file("sub/config.yaml")).is_ok());
  auto loaded = load_config(dir.file("sub/config.yaml"));
  ASSERT_TRUE(loaded.is_ok());
  EXPECT_EQ(loaded->backends.size(), 2u);
  EXPECT_EQ(std::filesystem::status(dir.file("sub/config.yaml")).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  auto missing = load_config(dir.file("none.yaml"));
  ASSERT_TRUE(missing.is_ok());
  EXPECT_TRUE(missing->backends.empty());
}

struct BadConfig {
  const char* yaml;
  const char* error;
};

TEST(ConfigTest, RefusesMistakesNamingTheLine) {
  const BadConfig cases[] = {
      {"backends:\n  - name: a\n    type: ssh\n    hots: []\n",
       "config.yaml:4:5: unknown key 'hots' in backend 'a' (did you mean 'hosts'?)"},
      {"backends:\n  - name: a\n    type: kubernetes\n",
       "config.yaml:3:11: backend 'a' has type 'kubernetes': sdstack knows 'ssh' and 'slurm'"},
      {"backends:\n  - name: a\n    type: ssh\n",
       "config.yaml:2:5: ssh backend 'a' needs 'hosts': a list of {host: ADDRESS}"},
      {"backends:\n  - name: a\n    type: ssh\n    hosts:\n      - host: h\n        price: cheap\n",
       "config.yaml:6:16: 'price' must be a number >= 0 (a price per hour), not 'cheap'"},
      {"backends:\n  - {name: a, type: ssh, hosts: [{host: h}]}\n  - {name: a, type: slurm}\n",
       "config.yaml:3:5: two backends are named 'a': names must be unique"},
      {"lost_after: soon\n", "config.yaml:1:13: 'lost_after' is a duration like 30s or 2m, not 'soon'"},
      {"backends:\n  - name: a\n    type: ssh\n    hosts:\n      - host: h\n      - host: h\n",
       "config.yaml:6:9: backend 'a' lists host h twice: each host once"},
      {"artifacts: {type: s3, bucket: b}\n", "config.yaml:1:12: the S3 store needs 'endpoint' and 'bucket'"},
  };
  for (const BadConfig& bad : cases) {
    auto config = parse_config(bad.yaml, "config.yaml");
    ASSERT_FALSE(config.is_ok()) << bad.yaml;
    EXPECT_EQ(config.status().message(), bad.error) << bad.yaml;
  }
}

TEST(ConfigTest, ParsesLogins) {
  auto full = parse_login("me@host.example:2222");
  ASSERT_TRUE(full.is_ok());
  EXPECT_EQ(full->user, "me");
  EXPECT_EQ(full->host, "host.example");
  EXPECT_EQ(full->port, 2222);
  auto bare = parse_login("10.0.0.1");
  ASSERT_TRUE(bare.is_ok());
  EXPECT_EQ(bare->display(), "10.0.0.1");
  EXPECT_FALSE(parse_login("me@host:0").is_ok());
  EXPECT_FALSE(parse_login("@host").is_ok());
  EXPECT_EQ(parse_login("me@").status().message(), "bad login 'me@': write host, user@host or user@host:port");
}

TEST(ConfigTest, MachineJsonRoundTrip) {
  MachineResources machine;
  machine.cpus = 8;
  machine.memory_bytes = 64LL << 30;
  machine.shm_bytes = 1LL << 30;
  machine.gpus = {{"NVIDIA H100 80GB HBM3", 80LL << 30}};
  auto back = machine_from_json(machine_to_json(machine));
  ASSERT_TRUE(back.is_ok());
  EXPECT_EQ(back->cpus, 8);
  EXPECT_EQ(back->memory_bytes, machine.memory_bytes);
  ASSERT_EQ(back->gpus.size(), 1u);
  EXPECT_EQ(back->gpus[0].name, "NVIDIA H100 80GB HBM3");
  EXPECT_FALSE(machine_from_json("{\"cpus\": 1}").is_ok());
}

}  // namespace
}  // namespace sdstack::flow

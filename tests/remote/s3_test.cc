// The S3 client and the artifact store's push/pull against a real S3 API: OpenStack Swift's s3api,
// started by fixtures/swift.sh.
#include "flow/s3.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <random>

#include "base/file.h"
#include "engines.h"
#include "testing/testing.h"

namespace sdstack::flow {
namespace {

namespace fs = std::filesystem;

// A key prefix of this test's own, so that tests and reruns against one bucket never see each
// other's keys.
std::string unique_prefix() {
  const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return "t" + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now).count()) + "-" +
         std::to_string(::getpid()) + "/" + test->name() + "/";
}

S3Config swift_config(const testing::Engine& swift) {
  S3Config config;
  config.endpoint = swift.at("S3_ENDPOINT");
  config.region = swift.at("S3_REGION");
  config.bucket = swift.at("S3_BUCKET");
  config.access_key = swift.at("S3_ACCESS_KEY");
  config.secret_key = swift.at("S3_SECRET_KEY");
  config.prefix = unique_prefix();
  return config;
}

std::string random_bytes(size_t size, uint32_t seed) {
  std::mt19937 random(seed);
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(random() & 0xFF);
  return bytes;
}

std::string read_bytes(const std::string& path) {
  auto contents = base::read_file(path);
  return contents.is_ok() ? *contents : "<unreadable: " + contents.status().message() + ">";
}

// Everything under `dir`, links not followed: "directory 0755", "file 0644 <size> <sha-ish>", "symlink -> text".
std::map<std::string, std::string> describe_tree(const std::string& dir) {
  std::map<std::string, std::string> tree;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    struct stat info;
    if (::lstat(it->path().c_str(), &info) != 0) continue;
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", info.st_mode & 07777);
    std::string& what = tree[it->path().lexically_relative(dir).string()];  // relative() would follow links
    if (S_ISDIR(info.st_mode)) {
      what = std::string("directory ") + mode;
    } else if (S_ISLNK(info.st_mode)) {
      what = "symlink -> " + fs::read_symlink(it->path()).string();
    } else {
      what = std::string("file ") + mode + " '" + read_bytes(it->path().string()) + "'";
    }
  }
  return tree;
}

TEST(S3SwiftTest, PutAndGetAMultiMegabyteFileByteForByte) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Client s3(swift_config(swift));
  testing::TempDir dir;
  const std::string bytes = random_bytes((5 << 20) + 12345, 1);
  testing::write_text_file(dir.file("big.bin"), bytes);

  ASSERT_TRUE(s3.put_file("big.bin", dir.file("big.bin")).is_ok());
  auto size = s3.head("big.bin");
  ASSERT_TRUE(size.is_ok()) << size.status().message();
  ASSERT_TRUE(size->has_value());
  EXPECT_EQ(**size, static_cast<int64_t>(bytes.size()));

  base::Status got = s3.get_to_file("big.bin", dir.file("down/copy.bin"));
  ASSERT_FALSE(got.is_ok()) << "the destination's folder does not exist";
  fs::create_directories(dir.file("down"));
  got = s3.get_to_file("big.bin", dir.file("down/copy.bin"));
  ASSERT_TRUE(got.is_ok()) << got.message();
  EXPECT_TRUE(read_bytes(dir.file("down/copy.bin")) == bytes);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.file("down")), fs::directory_iterator()), 1)
      << "no temporary file is left beside the download";

  auto data = s3.get_data("big.bin");
  ASSERT_TRUE(data.is_ok()) << data.status().message();
  ASSERT_TRUE(data->has_value());
  EXPECT_TRUE(**data == bytes);
  EXPECT_EQ(s3.stats().objects_put, 1);
  EXPECT_EQ(s3.stats().bytes_put, static_cast<int64_t>(bytes.size()));

  ASSERT_TRUE(s3.put_data("small", "").is_ok());  // an empty object
  auto empty = s3.get_data("small");
  ASSERT_TRUE(empty.is_ok() && empty->has_value()) << empty.status().message();
  EXPECT_EQ(**empty, "");
}

TEST(S3SwiftTest, ListFollowsContinuationTokens) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Client s3(swift_config(swift));
  // Names that need encoding in a URL and entities in XML.
  const std::vector<std::string> keys = {"a/1", "a/2", "a/3 space", "a/4&amp", "a/5<x>", "a/6", "a/7", "b/1"};
  for (const std::string& key : keys) ASSERT_TRUE(s3.put_data(key, "x" + key).is_ok()) << key;

  const int64_t before = s3.stats().requests;
  auto listed = s3.list("a/", /*page_size=*/3);
  ASSERT_TRUE(listed.is_ok()) << listed.status().message();
  EXPECT_EQ(*listed, std::vector<std::string>(keys.begin(), keys.end() - 1));
  EXPECT_EQ(s3.stats().requests - before, 3) << "7 keys in pages of 3";

  auto all = s3.list("");
  ASSERT_TRUE(all.is_ok()) << all.status().message();
  EXPECT_EQ(*all, keys);
  auto none = s3.list("c/");
  ASSERT_TRUE(none.is_ok()) << none.status().message();
  EXPECT_TRUE(none->empty());

  auto data = s3.get_data("a/4&amp");
  ASSERT_TRUE(data.is_ok() && data->has_value()) << data.status().message();
  EXPECT_EQ(**data, "xa/4&amp");

  ASSERT_TRUE(s3.remove("a/1").is_ok());
  ASSERT_TRUE(s3.remove("a/1").is_ok()) << "removing what is gone is fine";
  listed = s3.list("a/", 100);
  ASSERT_TRUE(listed.is_ok());
  EXPECT_EQ(listed->size(), 6u);
}

TEST(S3SwiftTest, MissingKeysAreNullopt) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Client s3(swift_config(swift));
  auto data = s3.get_data("no/such/key");
  ASSERT_TRUE(data.is_ok()) << data.status().message();
  EXPECT_FALSE(data->has_value());
  auto size = s3.head("no/such/key");
  ASSERT_TRUE(size.is_ok()) << size.status().message();
  EXPECT_FALSE(size->has_value());

  testing::TempDir dir;
  base::Status got = s3.get_to_file("no/such/key", dir.file("x"));
  ASSERT_FALSE(got.is_ok());
  EXPECT_EQ(got.code(), base::StatusCode::kNotFound);
  EXPECT_NE(got.message().find(s3.uri("no/such/key") + ": GET failed: HTTP 404 NoSuchKey"), std::string::npos)
      << got.message();
  EXPECT_TRUE(fs::is_empty(dir.path())) << "nothing is left of a failed download";

  auto manifest = s3_manifest(s3, "repo/none");
  ASSERT_TRUE(manifest.is_ok()) << manifest.status().message();
  EXPECT_FALSE(manifest->has_value());
  ArtifactStore local(dir.file("store"));
  base::Status pulled = pull_from_s3(s3, "repo/none", local);
  ASSERT_FALSE(pulled.is_ok());
  EXPECT_EQ(pulled.code(), base::StatusCode::kNotFound);
  EXPECT_NE(pulled.message().find("no artifacts are saved under 'repo/none' in s3://"), std::string::npos)
      << pulled.message();
}

TEST(S3SwiftTest, AWrongSecretSaysToCheckTheCredentialsAndDoesNotShowThem) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Config config = swift_config(swift);
  config.secret_key = "not-the-Secret-4711";
  S3Client s3(config);
  base::Status put = s3.put_data("denied", "bytes");
  ASSERT_FALSE(put.is_ok());
  const std::string& message = put.message();
  EXPECT_EQ(message.rfind("s3://" + config.bucket + "/" + config.prefix + "denied: PUT failed: HTTP 403 ", 0), 0u)
      << message;
  EXPECT_NE(message.find("SignatureDoesNotMatch"), std::string::npos) << message;
  EXPECT_NE(message.find("check the credentials"), std::string::npos) << message;
  EXPECT_EQ(message.find("not-the-Secret-4711"), std::string::npos) << message;

  auto listed = s3.list("");
  ASSERT_FALSE(listed.is_ok());
  EXPECT_NE(listed.status().message().find("check the credentials"), std::string::npos) << listed.status().message();
  EXPECT_EQ(listed.status().message().find("not-the-Secret-4711"), std::string::npos);

  // HEAD answers carry no error document: the hint comes from the status alone.
  auto size = s3.head("denied");
  ASSERT_FALSE(size.is_ok());
  EXPECT_NE(size.status().message().find("HTTP 403; check the credentials"), std::string::npos)
      << size.status().message();
}

TEST(S3SwiftTest, CreatesABucketOnlyWhenMissing) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Config config = swift_config(swift);
  config.prefix.clear();
  config.bucket = "sdstack-new-" + std::to_string(::getpid()) + "-" +
                  std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000);
  S3Client s3(config);
  auto before = s3.put_data("k", "v");
  ASSERT_FALSE(before.is_ok());
  EXPECT_NE(before.message().find("NoSuchBucket"), std::string::npos) << before.message();
  EXPECT_NE(before.message().find("create the bucket '" + config.bucket + "'"), std::string::npos) << before.message();

  ASSERT_TRUE(s3.create_bucket_if_missing().is_ok());
  ASSERT_TRUE(s3.create_bucket_if_missing().is_ok()) << "a second time: it is there";
  ASSERT_TRUE(s3.put_data("k", "v").is_ok());
  auto listed = s3.list("");
  ASSERT_TRUE(listed.is_ok()) << listed.status().message();
  EXPECT_EQ(*listed, std::vector<std::string>{"k"});
}

class S3ArtifactsTest : public ::testing::Test {
 protected:
  // A working dir with files in folders, an executable, an empty file and links.
  void make_work_dir(const std::string& work) {
    testing::write_text_file(work + "/output/0.png", random_bytes(300000, 2));
    testing::write_text_file(work + "/output/logs/run.txt", "step 1\nstep 2\n");
    testing::write_text_file(work + "/output/empty", "");
    testing::write_text_file(work + "/models/unet.bin", random_bytes(2 << 20, 3));
    testing::write_text_file(work + "/models/copy.bin", read_bytes(work + "/models/unet.bin"));  // stored once
    testing::write_text_file(work + "/run.sh", "#!/bin/sh\n");
    ASSERT_EQ(::chmod((work + "/run.sh").c_str(), 0755), 0);
    ASSERT_EQ(::symlink("0.png", (work + "/output/latest.png").c_str()), 0);
    ASSERT_EQ(::symlink("../nowhere", (work + "/output/dangling").c_str()), 0);
  }
};

TEST_F(S3ArtifactsTest, PushThenPullGivesTheSameManifestAndFiles) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Client s3(swift_config(swift));
  testing::TempDir dir;
  const std::string work = dir.file("work");
  make_work_dir(work);
  ArtifactStore store(dir.file("store"));
  auto saved = store.save("repo/prompt-1", work, {"output", "models", "run.sh", "missing.txt"});
  ASSERT_TRUE(saved.is_ok()) << saved.status().message();

  base::Status pushed = push_to_s3(store, "repo/prompt-1", s3);
  ASSERT_TRUE(pushed.is_ok()) << pushed.message();
  // 0.png, run.txt, empty, unet.bin (= copy.bin), run.sh, and the manifest.
  EXPECT_EQ(s3.stats().objects_put, 6);
  auto listed = s3.list("");
  ASSERT_TRUE(listed.is_ok()) << listed.status().message();
  EXPECT_EQ(listed->size(), 6u);
  EXPECT_EQ(listed->front(), s3_manifest_key("repo/prompt-1")) << "manifests/ sorts before objects/";

  auto remote = s3_manifest(s3, "repo/prompt-1");
  ASSERT_TRUE(remote.is_ok() && remote->has_value()) << remote.status().message();
  EXPECT_EQ(artifact_manifest_json(**remote), artifact_manifest_json(*saved));

  ArtifactStore fresh(dir.file("fresh"));
  base::Status pulled = pull_from_s3(s3, "repo/prompt-1", fresh);
  ASSERT_TRUE(pulled.is_ok()) << pulled.message();
  auto local = fresh.manifest("repo/prompt-1");
  ASSERT_TRUE(local.is_ok() && local->has_value()) << local.status().message();
  EXPECT_EQ(artifact_manifest_json(**local), artifact_manifest_json(*saved));
  EXPECT_EQ(read_bytes(fresh.manifest_path("repo/prompt-1")), read_bytes(store.manifest_path("repo/prompt-1")));

  ASSERT_TRUE(store.restore("repo/prompt-1", dir.file("from-store")).is_ok());
  base::Status restored = fresh.restore("repo/prompt-1", dir.file("from-s3"), /*verify=*/true);
  ASSERT_TRUE(restored.is_ok()) << restored.message();
  const auto expected = describe_tree(dir.file("from-store"));
  EXPECT_EQ(describe_tree(dir.file("from-s3")), expected);
  EXPECT_EQ(expected.count("output/latest.png"), 1u);
  EXPECT_EQ(expected.at("run.sh").substr(0, 9), "file 0755");

  // A second pull finds every object there and fetches none.
  const int64_t got = s3.stats().objects_got;
  ASSERT_TRUE(pull_from_s3(s3, "repo/prompt-1", fresh).is_ok());
  EXPECT_EQ(s3.stats().objects_got - got, 1) << "the manifest only";
}

TEST_F(S3ArtifactsTest, ObjectsAlreadyInTheBucketAreNotUploadedAgain) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Client s3(swift_config(swift));
  testing::TempDir dir;
  const std::string work = dir.file("work");
  make_work_dir(work);
  ArtifactStore store(dir.file("store"));
  ASSERT_TRUE(store.save("repo/a", work, {"."}).is_ok());
  ASSERT_TRUE(push_to_s3(store, "repo/a", s3).is_ok());
  const int64_t first = s3.stats().objects_put;
  EXPECT_EQ(first, 6);

  ASSERT_TRUE(push_to_s3(store, "repo/a", s3).is_ok());
  EXPECT_EQ(s3.stats().objects_put - first, 1) << "again: the manifest only";

  // Another run with one new file and the rest unchanged: one object and its manifest.
  testing::write_text_file(work + "/output/1.png", "a new image");
  ASSERT_TRUE(store.save("repo/b", work, {"."}).is_ok());
  const int64_t bytes_before = s3.stats().bytes_put;
  ASSERT_TRUE(push_to_s3(store, "repo/b", s3).is_ok());
  EXPECT_EQ(s3.stats().objects_put - first - 1, 2);
  EXPECT_LT(s3.stats().bytes_put - bytes_before, 10000);
}

TEST_F(S3ArtifactsTest, ACorruptObjectInTheBucketIsDataLossAndNoManifestIsWritten) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Client s3(swift_config(swift));
  testing::TempDir dir;
  testing::write_text_file(dir.file("work/weights.bin"), "the true weights");
  ArtifactStore store(dir.file("store"));
  auto saved = store.save("repo/c", dir.file("work"), {"weights.bin"});
  ASSERT_TRUE(saved.is_ok());
  ASSERT_TRUE(push_to_s3(store, "repo/c", s3).is_ok());
  const std::string digest = saved->entries[0].sha256;
  ASSERT_TRUE(s3.put_data(s3_object_key(digest), "the false weights").is_ok());  // one byte longer

  ArtifactStore fresh(dir.file("fresh"));
  base::Status pulled = pull_from_s3(s3, "repo/c", fresh);
  ASSERT_FALSE(pulled.is_ok());
  EXPECT_EQ(pulled.code(), base::StatusCode::kDataLoss);
  EXPECT_NE(pulled.message().find("object " + digest + " from " + s3.uri("")), std::string::npos) << pulled.message();
  EXPECT_NE(pulled.message().find("object is corrupt"), std::string::npos) << pulled.message();
  auto manifest = fresh.manifest("repo/c");
  ASSERT_TRUE(manifest.is_ok());
  EXPECT_FALSE(manifest->has_value());
  EXPECT_FALSE(base::file_exists(fresh.object_path(digest)));
}

TEST_F(S3ArtifactsTest, ACorruptLocalObjectIsNotPushed) {
  SDSTACK_REQUIRE_ENGINE(swift, "swift");
  S3Client s3(swift_config(swift));
  testing::TempDir dir;
  testing::write_text_file(dir.file("work/weights.bin"), "the true weights");
  ArtifactStore store(dir.file("store"));
  auto saved = store.save("repo/d", dir.file("work"), {"weights.bin"});
  ASSERT_TRUE(saved.is_ok());
  const std::string object = store.object_path(saved->entries[0].sha256);
  ASSERT_EQ(::chmod(object.c_str(), 0644), 0);
  testing::write_text_file(object, "the fake weights");  // the same size

  base::Status pushed = push_to_s3(store, "repo/d", s3);
  ASSERT_FALSE(pushed.is_ok());
  EXPECT_EQ(pushed.code(), base::StatusCode::kDataLoss);
  EXPECT_NE(pushed.message().find("artifact 'weights.bin' of 'repo/d': " + object + ": not uploaded to "),
            std::string::npos)
      << pushed.message();
  auto listed = s3.list("");
  ASSERT_TRUE(listed.is_ok()) << listed.status().message();
  EXPECT_TRUE(listed->empty()) << "neither the object nor the manifest";
}

}  // namespace
}  // namespace sdstack::flow

// hub::pull against a local fake Hub serving a tiny model the project makes: a fresh pull into the
// Hugging Face cache layout, a second pull that downloads nothing, resume, corruption, 401, 404,
// offline mode, --to DIR, transient errors and an unreachable host.
#include "hub/pull.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "base/file.h"
#include "base/sha256.h"
#include "hub/fake_hub.h"
#include "testing/testing.h"

namespace sdstack {
namespace {

namespace fs = std::filesystem;
using testing::FakeHub;
using testing::HubFile;

std::string sha256_of(const std::string& bytes) {
  base::Sha256 hash;
  hash.update(bytes.data(), bytes.size());
  return hash.hex_digest();
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string read_link(const std::string& path) {
  char target[4096];
  ssize_t n = ::readlink(path.c_str(), target, sizeof target);
  return n < 0 ? "" : std::string(target, static_cast<size_t>(n));
}

// Every file under `dir`, relative, sorted; symlinks count as files.
std::vector<std::string> tree(const std::string& dir) {
  std::vector<std::string> files;
  if (!fs::exists(dir)) return files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    // The path as listed (fs::relative would resolve symlinks).
    if (!entry.is_directory()) files.push_back(entry.path().generic_string().substr(dir.size() + 1));
  }
  std::sort(files.begin(), files.end());
  return files;
}

constexpr const char* kRepo = "org/tiny";
constexpr const char* kUnet = "unet/diffusion_pytorch_model.safetensors";

class PullTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ::setenv("NO_PROXY", "127.0.0.1,localhost", 1);  // before any thread: the fake Hub is local
    repo_dir_ = new testing::TempDir();
    tiny_ = new testing::TinyRepo(testing::make_tiny_repo(repo_dir_->path()));
  }
  static void TearDownTestSuite() {
    delete tiny_;
    delete repo_dir_;
  }

  void SetUp() override {
    commit_ = hub_.publish(kRepo, tiny_->files);
    settings_.endpoint = hub_.endpoint();
    settings_.cache_dir = dir_.file("cache");
    settings_.retry.first_delay = std::chrono::milliseconds(1);
  }

  base::Result<hub::PullResult> pull(hub::PullRequest request = {}) {
    if (request.repo_id.empty()) request.repo_id = kRepo;
    request.show_progress = false;
    return hub::pull(settings_, request);
  }

  const HubFile& served(const std::string& path) const {
    for (const HubFile& file : tiny_->files) {
      if (file.path == path) return file;
    }
    throw std::runtime_error("no served file " + path);
  }
  std::string repo_root() const { return dir_.file("cache/models--org--tiny"); }
  std::string snapshot() const { return repo_root() + "/snapshots/" + commit_; }

  static testing::TempDir* repo_dir_;
  static testing::TinyRepo* tiny_;
  FakeHub hub_;
  testing::TempDir dir_;
  hub::HubSettings settings_;
  std::string commit_;
};

testing::TempDir* PullTest::repo_dir_ = nullptr;
testing::TinyRepo* PullTest::tiny_ = nullptr;

TEST_F(PullTest, FreshPullFillsTheHuggingFaceCacheLayout) {
  hub_.set_page_size(4);  // the listing comes in pages, linked by the Link header
  auto result = pull();
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(result->commit, commit_);
  EXPECT_EQ(result->folder, snapshot());
  EXPECT_EQ(result->files, tiny_->expected);  // no safety checker, pickles, fp16/EMA variants, root checkpoints
  EXPECT_EQ(result->downloaded_files, static_cast<int>(tiny_->expected.size()));
  EXPECT_EQ(result->cached_files, 0);

  EXPECT_EQ(slurp(repo_root() + "/refs/main"), commit_);  // no newline, as huggingface_hub writes it
  EXPECT_EQ(tree(snapshot()), tiny_->expected);
  for (const std::string& path : tiny_->expected) {
    const std::string link = snapshot() + "/" + path;
    ASSERT_TRUE(fs::is_symlink(link)) << path;
    const std::string target = read_link(link);
    const std::string ups = path.find('/') == std::string::npos ? "../../" : "../../../";
    EXPECT_EQ(target.rfind(ups + "blobs/", 0), 0u) << path << " -> " << target;  // relative
    EXPECT_EQ(slurp(link), served(path).content) << path;
    if (served(path).lfs) {
      EXPECT_EQ(target, ups + "blobs/" + sha256_of(served(path).content)) << path;
    }
  }
  for (const std::string& blob : tree(repo_root() + "/blobs")) {
    EXPECT_EQ(blob.find(".incomplete"), std::string::npos) << blob;
  }
  EXPECT_EQ(hub_.file_body_requests(), static_cast<int>(tiny_->expected.size()));
}

TEST_F(PullTest, SecondPullDownloadsNothing) {
  ASSERT_TRUE(pull().is_ok());
  hub_.clear_requests();
  auto again = pull();
  ASSERT_TRUE(again.is_ok()) << again.status().message();
  EXPECT_EQ(hub_.file_body_requests(), 0);
  EXPECT_EQ(again->downloaded_files, 0);
  EXPECT_EQ(again->downloaded_bytes, 0);
  EXPECT_EQ(again->cached_files, static_cast<int>(tiny_->expected.size()));
  EXPECT_EQ(again->files, tiny_->expected);
}

TEST_F(PullTest, ResumesWithRangeAfterTheServerDropsTheConnection) {
  const int64_t size = static_cast<int64_t>(served(kUnet).content.size());
  hub_.drop_connection(kUnet, size / 2);
  auto result = pull();
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(slurp(snapshot() + "/" + kUnet), served(kUnet).content);
  std::vector<std::string> ranges;
  for (const FakeHub::Request& request : hub_.requests()) {
    if (request.file_body == kUnet) ranges.push_back(request.range);
  }
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0], "");
  EXPECT_EQ(ranges[1], "bytes=" + std::to_string(size / 2) + "-");
}

TEST_F(PullTest, ANextRunResumesThePartialFileItKept) {
  const int64_t size = static_cast<int64_t>(served(kUnet).content.size());
  hub_.drop_connection(kUnet, size / 3, 5);
  settings_.retry.max_attempts = 1;
  auto failed = pull();
  ASSERT_FALSE(failed.is_ok());
  EXPECT_NE(failed.status().message().find(kUnet), std::string::npos) << failed.status().message();
  EXPECT_NE(failed.status().message().find("run the command again to resume"), std::string::npos)
      << failed.status().message();
  const std::string blob = repo_root() + "/blobs/" + sha256_of(served(kUnet).content);
  EXPECT_EQ(fs::file_size(blob + ".incomplete"), static_cast<uintmax_t>(size / 3));
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_FALSE(fs::exists(repo_root() + "/refs/main"));  // a failed pull never looks complete

  hub_.drop_connection(kUnet, 0, 0);
  hub_.clear_requests();
  settings_.retry.max_attempts = 5;
  auto resumed = pull();
  ASSERT_TRUE(resumed.is_ok()) << resumed.status().message();
  EXPECT_EQ(slurp(blob), served(kUnet).content);
  EXPECT_FALSE(fs::exists(blob + ".incomplete"));
  std::vector<std::string> ranges;
  for (const FakeHub::Request& request : hub_.requests()) {
    if (request.file_body == kUnet) ranges.push_back(request.range);
  }
  EXPECT_EQ(ranges, std::vector<std::string>{"bytes=" + std::to_string(size / 3) + "-"});
}

TEST_F(PullTest, ACorruptedDownloadIsDiscardedAndFetchedOnceMore) {
  hub_.corrupt(kUnet, 1);
  auto result = pull();
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(hub_.file_body_requests(kUnet), 2);
  EXPECT_EQ(slurp(snapshot() + "/" + kUnet), served(kUnet).content);
}

TEST_F(PullTest, PersistentCorruptionFailsAndLeavesNothingThatLooksComplete) {
  hub_.corrupt(kUnet, -1);
  auto result = pull();
  ASSERT_FALSE(result.is_ok());
  const std::string message = result.status().message();
  EXPECT_NE(message.find(kUnet), std::string::npos) << message;
  EXPECT_NE(message.find("sha256 mismatch"), std::string::npos) << message;
  EXPECT_EQ(hub_.file_body_requests(kUnet), 2);  // retried once
  const std::string blob = repo_root() + "/blobs/" + sha256_of(served(kUnet).content);
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_FALSE(fs::exists(blob + ".incomplete"));
  EXPECT_FALSE(fs::exists(snapshot() + "/" + kUnet));
  EXPECT_FALSE(fs::exists(repo_root() + "/refs/main"));
}

TEST_F(PullTest, DiskFullIsAClearErrorAndKeepsThePartialFileForResume) {
  // Writes to /dev/full fail with ENOSPC: the unet's partial download lands there.
  const std::string blob = repo_root() + "/blobs/" + sha256_of(served(kUnet).content);
  fs::create_directories(repo_root() + "/blobs");
  fs::create_symlink("/dev/full", blob + ".incomplete");
  auto result = pull();
  ASSERT_FALSE(result.is_ok());
  const std::string message = result.status().message();
  EXPECT_EQ(message.rfind("disk full: cannot write " + blob + ".incomplete (org/tiny: " + kUnet + ", 0 B of ", 0), 0u)
      << message;
  EXPECT_NE(message.find("Free some space in " + settings_.cache_dir + " and run the command again"), std::string::npos)
      << message;
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_FALSE(fs::exists(repo_root() + "/refs/main"));
}

TEST_F(PullTest, TransientServerErrorsAreRetried) {
  hub_.fail_with_status("tokenizer/vocab.json", 503, 2);
  auto result = pull();
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(slurp(snapshot() + "/tokenizer/vocab.json"), served("tokenizer/vocab.json").content);
}

TEST_F(PullTest, GatedRepoWithoutTokenIs401AndSaysToSetHfToken) {
  hub_.require_token(kRepo, "hf_secret_token_123");
  auto result = pull();
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "org/tiny: the Hub asks for a token (HTTP 401): the repository is gated or private. Set HF_TOKEN (or pass "
            "--token) to a token of an account with access (" +
                hub_.endpoint() + "/settings/tokens)");

  settings_.token = "hf_wrong_token";
  result = pull();
  ASSERT_FALSE(result.is_ok());
  EXPECT_NE(result.status().message().find("HTTP 403"), std::string::npos) << result.status().message();
  EXPECT_EQ(result.status().message().find("hf_wrong_token"), std::string::npos) << result.status().message();

  settings_.token = "hf_secret_token_123";
  result = pull();
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  for (const FakeHub::Request& request : hub_.requests()) {
    if (request.target.rfind("/api/", 0) == 0 && request.status == 200) {
      EXPECT_EQ(request.authorization, "Bearer hf_secret_token_123");
    }
  }
}

TEST_F(PullTest, NotFoundSaysWhichOfRepoRevisionOrFile) {
  hub::PullRequest request;
  request.repo_id = "org/no-such-model";
  auto result = pull(request);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(), "org/no-such-model: repository not found on " + hub_.endpoint() +
                                           " (HTTP 404); check the id (ORG/NAME, as in the model's URL), or set "
                                           "HF_TOKEN if it is private");

  request.repo_id = kRepo;
  request.revision = "v9";
  result = pull(request);
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "org/tiny: revision 'v9' not found (HTTP 404); check --revision (a branch, tag or commit hash)");

  hub_.fail_with_status("tokenizer/vocab.json", 404, 1);
  result = pull();
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().message(),
            "org/tiny: file 'tokenizer/vocab.json' not found at revision '" + commit_ + "' (HTTP 404)");
  EXPECT_FALSE(fs::exists(repo_root() + "/refs/main"));
}

TEST_F(PullTest, OfflineUsesTheCacheOnlyAndSaysWhatIsMissing) {
  settings_.offline = true;
  auto missing = pull();
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().message(),
            "org/tiny at revision 'main' is not in the Hugging Face cache (" + settings_.cache_dir +
                ") and offline mode (--offline or HF_HUB_OFFLINE) forbids downloading it; run `sdstack pull "
                "org/tiny` while online");
  EXPECT_TRUE(hub_.requests().empty());

  settings_.offline = false;
  ASSERT_TRUE(pull().is_ok());
  hub_.clear_requests();
  settings_.offline = true;
  auto cached = pull();
  ASSERT_TRUE(cached.is_ok()) << cached.status().message();
  EXPECT_TRUE(cached->offline);
  EXPECT_EQ(cached->folder, snapshot());
  EXPECT_EQ(cached->files, tiny_->expected);
  EXPECT_TRUE(hub_.requests().empty());

  fs::remove(snapshot() + "/" + kUnet);  // a cache that lost a weight file is not complete
  auto incomplete = pull();
  ASSERT_FALSE(incomplete.is_ok());
  EXPECT_NE(incomplete.status().message().find("is incomplete in the Hugging Face cache"), std::string::npos)
      << incomplete.status().message();
  EXPECT_NE(incomplete.status().message().find("no weights in unet/"), std::string::npos)
      << incomplete.status().message();
}

TEST_F(PullTest, ToDirWritesPlainFiles) {
  hub::PullRequest request;
  request.to_dir = dir_.file("models/org/tiny");
  auto result = pull(request);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  EXPECT_EQ(result->folder, request.to_dir);
  EXPECT_EQ(tree(request.to_dir), tiny_->expected);
  for (const std::string& path : tiny_->expected) {
    const std::string file = request.to_dir + "/" + path;
    EXPECT_FALSE(fs::is_symlink(file)) << path;
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(file))) << path;
    EXPECT_EQ(slurp(file), served(path).content) << path;
  }
  // Again: nothing downloaded, nothing copied (the files keep their inode).
  struct stat before;
  ASSERT_EQ(::stat((request.to_dir + "/" + kUnet).c_str(), &before), 0);
  hub_.clear_requests();
  ASSERT_TRUE(pull(request).is_ok());
  struct stat after;
  ASSERT_EQ(::stat((request.to_dir + "/" + kUnet).c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_EQ(hub_.file_body_requests(), 0);
}

TEST_F(PullTest, VariantAndIncludeChooseOtherFiles) {
  hub::PullRequest request;
  request.select.variant = "fp16";
  request.select.include = {"safety_checker/*"};
  request.select.exclude = {"*.bin"};
  auto result = pull(request);
  ASSERT_TRUE(result.is_ok()) << result.status().message();
  std::vector<std::string> expected = tiny_->expected;
  std::replace(expected.begin(), expected.end(), std::string(kUnet),
               std::string("unet/diffusion_pytorch_model.fp16.safetensors"));
  expected.push_back("safety_checker/config.json");
  expected.push_back("safety_checker/model.safetensors");
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(result->files, expected);
}

TEST_F(PullTest, UnreachableHostSaysSoAndMentionsOffline) {
  FakeHub* closed = new FakeHub();
  settings_.endpoint = closed->endpoint();
  delete closed;  // nothing listens there any more
  auto result = pull();
  ASSERT_FALSE(result.is_ok());
  const std::string message = result.status().message();
  EXPECT_EQ(message.rfind("cannot reach the Hugging Face Hub at " + settings_.endpoint + " (", 0), 0u) << message;
  EXPECT_NE(message.find("--offline"), std::string::npos) << message;
}

}  // namespace
}  // namespace sdstack

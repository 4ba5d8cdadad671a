// `sdstack pull` end to end against a local fake Hub serving a model `sdstack make-model` makes:
// the pulled model generates an image, the token never shows, offline mode, one clear error each.
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>

#include "hub/fake_hub.h"
#include "io/png.h"
#include "testing/testing.h"

namespace sdstack {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::run_sdstack;

constexpr const char* kToken = "hf_e2eSecretTokenValue";

class PullCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tiny_ = testing::make_tiny_repo(dir_.file("repo"));
    commit_ = hub_.publish("org/tiny", tiny_.files);
    set_env("HF_ENDPOINT", hub_.endpoint());
    set_env("HF_HUB_CACHE", dir_.file("cache"));
    set_env("SDSTACK_HUB_RETRY_DELAY_MS", "1");
    set_env("NO_PROXY", "127.0.0.1,localhost");
    for (const char* name : {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HOME", "SDSTACK_LOG"}) {
      set_env(name, std::nullopt);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }

  // Sets (or unsets) an environment variable for the sdstack runs of this test.
  void set_env(const std::string& name, const std::optional<std::string>& value) {
    if (saved_.count(name) == 0) {
      const char* old = std::getenv(name.c_str());
      saved_[name] = old != nullptr ? std::optional<std::string>(old) : std::nullopt;
    }
    if (value) {
      ::setenv(name.c_str(), value->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }

  std::string snapshot() const { return dir_.file("cache/models--org--tiny/snapshots/" + commit_); }

  // Exit status 1 and exactly one line on stderr that contains `expected`.
  static void expect_one_error(const CommandResult& result, const std::string& expected) {
    EXPECT_EQ(result.exit_code, 1) << result.err;
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
    EXPECT_EQ(result.err.rfind("sdstack: error: ", 0), 0u) << result.err;
    EXPECT_NE(result.err.find(expected), std::string::npos) << result.err;
    EXPECT_EQ(result.out, "");
  }

  testing::TempDir dir_;
  testing::FakeHub hub_;
  testing::TinyRepo tiny_;
  std::string commit_;
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST_F(PullCliTest, ThePulledModelGeneratesAnImage) {
  if (!tiny_.complete_model) GTEST_SKIP() << "sdstack make-model did not make the tiny model";
  CommandResult pulled = run_sdstack({"pull", "org/tiny"});
  ASSERT_EQ(pulled.exit_code, 0) << pulled.err;
  EXPECT_EQ(pulled.out, snapshot() + "\n");
  EXPECT_NE(pulled.err.find("pulled org/tiny (main, commit " + commit_.substr(0, 7) +
                            "): " + std::to_string(tiny_.expected.size()) + " files"),
            std::string::npos)
      << pulled.err;

  // By Hub id, from the cache (refs/main -> snapshot), offline.
  set_env("HF_HUB_OFFLINE", "1");
  CommandResult generated = run_sdstack(
      {"generate", "--model", "org/tiny", "-P", "cats in hats", "--steps", "2", "--seed", "7", "-o", dir_.file("out")});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  auto image = io::read_png(dir_.file("out/0.png"));
  ASSERT_TRUE(image.is_ok()) << image.status().message();
  EXPECT_GT(image->width, 0);

  // And as a plain folder (--to, from the cache: nothing downloaded again).
  hub_.clear_requests();
  set_env("HF_HUB_OFFLINE", std::nullopt);
  const std::string folder = dir_.file("models/org/tiny");
  pulled = run_sdstack({"pull", "org/tiny", "--to", folder});
  ASSERT_EQ(pulled.exit_code, 0) << pulled.err;
  EXPECT_EQ(pulled.out, folder + "\n");
  EXPECT_EQ(hub_.file_body_requests(), 0);
  for (const auto& entry : fs::recursive_directory_iterator(folder)) EXPECT_FALSE(entry.is_symlink()) << entry.path();
  generated = run_sdstack(
      {"generate", "--model", folder, "-P", "cats in hats", "--steps", "2", "--seed", "7", "-o", dir_.file("out2")});
  ASSERT_EQ(generated.exit_code, 0) << generated.err;
  auto same = io::read_png(dir_.file("out2/0.png"));
  ASSERT_TRUE(same.is_ok());
  EXPECT_EQ(same->rgb, image->rgb);
}

TEST_F(PullCliTest, TheTokenIsSentButNeverPrinted) {
  hub_.require_token("org/tiny", kToken);
  set_env("SDSTACK_LOG", "debug");
  expect_one_error(run_sdstack({"pull", "org/tiny"}), "(HTTP 401): the repository is gated or private. Set HF_TOKEN");

  CommandResult wrong = run_sdstack({"pull", "org/tiny", "--token", "hf_wrongSecretValue"});
  expect_one_error(wrong, "(HTTP 403)");
  EXPECT_EQ(wrong.err.find("hf_wrongSecretValue"), std::string::npos) << wrong.err;

  set_env("HF_TOKEN", kToken);
  hub_.corrupt("unet/diffusion_pytorch_model.safetensors", -1);
  CommandResult corrupt = run_sdstack({"pull", "org/tiny"});
  EXPECT_EQ(corrupt.exit_code, 1);
  EXPECT_NE(corrupt.err.find("sha256 mismatch"), std::string::npos) << corrupt.err;

  hub_.corrupt("unet/diffusion_pytorch_model.safetensors", 0);
  CommandResult pulled = run_sdstack({"pull", "org/tiny", "--to", dir_.file("to")});
  ASSERT_EQ(pulled.exit_code, 0) << pulled.err;
  for (const CommandResult& result : {wrong, corrupt, pulled}) {
    EXPECT_EQ(result.out.find(kToken), std::string::npos) << result.out;
    EXPECT_EQ(result.err.find(kToken), std::string::npos) << result.err;
  }
  int authorized = 0;
  for (const testing::FakeHub::Request& request : hub_.requests()) {
    authorized += request.authorization == std::string("Bearer ") + kToken ? 1 : 0;
  }
  EXPECT_GT(authorized, 0);
}

TEST_F(PullCliTest, OfflineUsesOnlyTheCache) {
  set_env("HF_HUB_OFFLINE", "1");
  expect_one_error(run_sdstack({"pull", "org/tiny"}),
                   "org/tiny at revision 'main' is not in the Hugging Face cache (" + dir_.file("cache") +
                       ") and offline mode (--offline or HF_HUB_OFFLINE) forbids downloading it; run `sdstack pull "
                       "org/tiny` while online");
  set_env("HF_HUB_OFFLINE", std::nullopt);
  ASSERT_EQ(run_sdstack({"pull", "org/tiny"}).exit_code, 0);
  hub_.clear_requests();
  CommandResult offline = run_sdstack({"pull", "org/tiny", "--offline"});
  ASSERT_EQ(offline.exit_code, 0) << offline.err;
  EXPECT_EQ(offline.out, snapshot() + "\n");
  EXPECT_TRUE(hub_.requests().empty());

  expect_one_error(
      run_sdstack({"generate", "--model", "org/other", "-P", "cats", "-o", dir_.file("out")}),
      "no model 'org/other' (no folder ./org/other or ./models/org/other): org/other is not in the Hugging "
      "Face cache (" +
          dir_.file("cache") + "); download it with `sdstack pull org/other`");
}

TEST_F(PullCliTest, NotFoundIsOneClearError) {
  expect_one_error(run_sdstack({"pull", "org/nope"}),
                   "org/nope: repository not found on " + hub_.endpoint() + " (HTTP 404)");
  expect_one_error(run_sdstack({"pull", "org/tiny", "--revision", "v2"}),
                   "org/tiny: revision 'v2' not found (HTTP 404)");
  expect_one_error(run_sdstack({"pull", "not a repo"}), "'not a repo' is not a Hub repository id");
}

}  // namespace
}  // namespace sdstack

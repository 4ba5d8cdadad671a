// The artifact store on real temp trees: round trips, dedupe, refused paths, failed saves, corrupt objects, gc, push.
#include "flow/artifact_store.h"

#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <thread>

#include "base/file.h"
#include "base/sha256.h"
#include "testing/testing.h"

namespace sdstack::flow {
namespace {

namespace fs = std::filesystem;
using Tree = std::map<std::string, std::string>;  // relative path -> what is there

void make_file(const std::string& path, const std::string& contents, mode_t mode = 0644) {
  fs::create_directories(fs::path(path).parent_path());
  testing::write_text_file(path, contents);
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
}

void make_dir(const std::string& path, mode_t mode = 0755) {
  fs::create_directories(path);
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
}

void make_link(const std::string& target, const std::string& path) {
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0) << path;
}

std::string octal(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", mode & 07777);
  return text;
}

std::string read_bytes(const std::string& path) {
  auto contents = base::read_file(path);
  return contents.is_ok() ? *contents : "<unreadable: " + contents.status().message() + ">";
}

// Everything under `dir`, links not followed: "directory 0755", "file 0644 'bytes'", "symlink -> text".
Tree describe_tree(const std::string& dir) {
  Tree tree;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    const std::string path = it->path().string();
    struct stat info;
    if (::lstat(path.c_str(), &info) != 0) continue;
    std::string& what = tree[fs::relative(it->path(), dir).string()];
    if (S_ISDIR(info.st_mode)) {
      what = "directory " + octal(info.st_mode);
    } else if (S_ISLNK(info.st_mode)) {
      what = "symlink -> " + fs::read_symlink(path).string();
    } else if (S_ISREG(info.st_mode)) {
      what = "file " + octal(info.st_mode) + " '" + read_bytes(path) + "'";
    } else {
      what = "other";
    }
  }
  return tree;
}

std::string sha256_of(const std::string& bytes) {
  base::Sha256 hasher;
  hasher.update(bytes.data(), bytes.size());
  return hasher.hex_digest();
}

std::vector<std::string> object_names(const ArtifactStore& store) {
  std::vector<std::string> names;
  const std::string dir = store.root() + "/objects";
  if (!fs::exists(dir)) return names;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

ino_t inode_of(const std::string& path) {
  struct stat info;
  return ::lstat(path.c_str(), &info) == 0 ? info.st_ino : 0;
}

const ArtifactEntry* find_entry(const ArtifactManifest& manifest, const std::string& path) {
  for (const ArtifactEntry& entry : manifest.entries) {
    if (entry.path == path) return &entry;
  }
  return nullptr;
}

std::string describe_entry(const ArtifactEntry& entry) {
  return entry.path + " " + std::string(artifact_type_name(entry.type)) + " " + octal(entry.mode) + " " +
         std::to_string(entry.size) + " " + entry.sha256 + " " + entry.link_target;
}

// A run's working dir with every kind of entry the store must keep.
void make_run_tree(const std::string& work) {
  make_dir(work + "/models", 0755);
  make_file(work + "/models/sd/unet/weights.bin", std::string(3000, 'w') + "end", 0644);
  make_file(work + "/models/sd/run.sh", "#!/bin/sh\necho hi\n", 0755);
  make_file(work + "/models/sd/empty.txt", "", 0600);
  make_dir(work + "/models/sd/empty_dir", 0700);
  make_link("unet/weights.bin", work + "/models/sd/latest");
  make_link("unet", work + "/models/sd/unet_link");
  make_link("nowhere/at/all", work + "/models/sd/dangling");
  make_link("/etc/hostname", work + "/models/sd/absolute");
  ASSERT_EQ(::mkfifo((work + "/models/sd/fifo").c_str(), 0644), 0);
  make_file(work + "/output/0.png", "png bytes", 0640);
  make_file(work + "/notes.txt", "not declared");
}

TEST(ArtifactStore, RoundTripKeepsTypesModesLinksAndBytes) {
  testing::TempDir dir;
  const std::string work = dir.file("work");
  make_run_tree(work);
  ArtifactStore store(dir.file("store"));

  auto saved = store.save("repo/run-1", work, {"./models", "output/", "./not-made-yet"});
  ASSERT_TRUE(saved.is_ok()) << saved.status().message();
  EXPECT_EQ(saved->key, "repo/run-1");
  EXPECT_EQ(saved->declared, (std::vector<std::string>{"models", "output", "not-made-yet"}));
  EXPECT_EQ(saved->missing, std::vector<std::string>{"not-made-yet"});
  EXPECT_EQ(saved->total_bytes, 3003 + 18 + 0 + 9);
  EXPECT_GT(saved->saved_ms, 0);

  std::vector<std::string> paths;
  for (const ArtifactEntry& entry : saved->entries) paths.push_back(entry.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"models", "models/sd", "models/sd/absolute", "models/sd/dangling",
                                             "models/sd/empty.txt", "models/sd/empty_dir", "models/sd/latest",
                                             "models/sd/run.sh", "models/sd/unet", "models/sd/unet/weights.bin",
                                             "models/sd/unet_link", "output", "output/0.png"}))
      << "the fifo is skipped and the linked directory is not walked a second time";
  const ArtifactEntry* unet_link = find_entry(*saved, "models/sd/unet_link");
  ASSERT_NE(unet_link, nullptr);
  EXPECT_EQ(unet_link->type, ArtifactEntry::Type::kSymlink);
  EXPECT_EQ(unet_link->link_target, "unet");
  const ArtifactEntry* script = find_entry(*saved, "models/sd/run.sh");
  ASSERT_NE(script, nullptr);
  EXPECT_EQ(script->mode, 0755u);
  EXPECT_EQ(script->sha256, sha256_of("#!/bin/sh\necho hi\n"));
  EXPECT_EQ(read_bytes(store.object_path(script->sha256)), "#!/bin/sh\necho hi\n");

  auto reread = store.manifest("repo/run-1");
  ASSERT_TRUE(reread.is_ok()) << reread.status().message();
  ASSERT_TRUE(reread->has_value());
  EXPECT_EQ((*reread)->declared, saved->declared);
  EXPECT_EQ((*reread)->missing, saved->missing);
  EXPECT_EQ((*reread)->total_bytes, saved->total_bytes);
  EXPECT_EQ((*reread)->saved_ms, saved->saved_ms);
  ASSERT_EQ((*reread)->entries.size(), saved->entries.size());
  for (size_t i = 0; i < saved->entries.size(); ++i) {
    EXPECT_EQ(describe_entry((*reread)->entries[i]), describe_entry(saved->entries[i]));
  }

  const std::string dest = dir.file("next-run");
  ASSERT_TRUE(store.restore("repo/run-1", dest, /*verify=*/true).is_ok());
  Tree expected = describe_tree(work);
  expected.erase("notes.txt");
  expected.erase("models/sd/fifo");
  EXPECT_EQ(describe_tree(dest), expected);
  EXPECT_EQ(expected["models/sd/run.sh"], "file 0755 '#!/bin/sh\necho hi\n'");
  EXPECT_EQ(expected["models/sd/dangling"], "symlink -> nowhere/at/all");
  EXPECT_EQ(store.keys().value(), std::vector<std::string>{"repo/run-1"});
}

TEST(ArtifactStore, IdenticalFilesAreStoredOnce) {
  testing::TempDir dir;
  const std::string work = dir.file("work");
  make_file(work + "/a.bin", "same bytes");
  make_file(work + "/sub/b.bin", "same bytes", 0755);
  make_file(work + "/c.bin", "other bytes");
  ArtifactStore store(dir.file("store"));

  auto first = store.save("repo/one", work, {"."});
  ASSERT_TRUE(first.is_ok()) << first.status().message();
  EXPECT_EQ(first->declared, std::vector<std::string>{"."});
  std::vector<std::string> expected_objects = {sha256_of("same bytes"), sha256_of("other bytes")};
  std::sort(expected_objects.begin(), expected_objects.end());
  EXPECT_EQ(object_names(store), expected_objects);
  EXPECT_EQ(find_entry(*first, "a.bin")->sha256, find_entry(*first, "sub/b.bin")->sha256);
  EXPECT_EQ(find_entry(*first, "sub/b.bin")->mode, 0755u) << "modes belong to entries, not objects";

  const std::string object = store.object_path(sha256_of("same bytes"));
  struct stat info;
  ASSERT_EQ(::lstat(object.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 07777, 0444u);
  const ino_t inode = inode_of(object);

  auto second = store.save("repo/two", work, {"a.bin", "sub"});
  ASSERT_TRUE(second.is_ok()) << second.status().message();
  EXPECT_EQ(object_names(store), expected_objects);
  EXPECT_EQ(inode_of(object), inode) << "an object already stored is not written again";
  EXPECT_TRUE(fs::is_empty(store.root() + "/tmp")) << "the dropped copies leave no temporaries";

  // Re-saving a key replaces its manifest.
  fs::remove(work + "/c.bin");
  auto resaved = store.save("repo/one", work, {"."});
  ASSERT_TRUE(resaved.is_ok()) << resaved.status().message();
  EXPECT_EQ(find_entry(*store.manifest("repo/one").value(), "c.bin"), nullptr);
  EXPECT_NE(find_entry(*store.manifest("repo/one").value(), "a.bin"), nullptr);
}

TEST(ArtifactStore, BadPathsAndKeysAreRefusedByName) {
  testing::TempDir dir;
  make_file(dir.file("work/real/file.txt"), "x");
  make_link("real", dir.file("work/link"));
  ArtifactStore store(dir.file("store"));

  struct Case {
    std::string key;
    std::string path;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"k", "../x", "artifact path '../x' leaves the working directory ('..' is not allowed)"},
      {"k", "a/../../b", "artifact path 'a/../../b' leaves the working directory ('..' is not allowed)"},
      {"k", "/abs", "artifact path '/abs' is absolute; artifact paths are relative to the working directory"},
      {"k", "", "an artifact path is empty"},
      {"k", "link/file.txt",
       "artifact path 'link/file.txt' goes through the symbolic link 'link'; declare 'link' to save the link itself"},
      {"../k", "real", "artifact key '../k' must be a relative path without empty, '.' or '..' parts"},
      {"/k", "real", "artifact key '/k' must be a relative path without empty, '.' or '..' parts"},
      {"", "real", "artifact key '' must be a relative path without empty, '.' or '..' parts"},
      {"a b", "real", "artifact key 'a b' may hold only letters, digits, '.', '_', '-' and '/'"},
  };
  for (const Case& c : cases) {
    auto saved = store.save(c.key, dir.file("work"), {"real", c.path});
    ASSERT_FALSE(saved.is_ok()) << c.key << " " << c.path;
    EXPECT_EQ(saved.status().code(), base::StatusCode::kInvalidArgument);
    EXPECT_EQ(saved.status().message(), c.message);
  }
  EXPECT_TRUE(store.keys().value().empty());

  EXPECT_EQ(normalise_artifact_path("./models/").value(), "models");
  EXPECT_EQ(normalise_artifact_path("a//./b").value(), "a/b");
  EXPECT_EQ(normalise_artifact_path("./").value(), ".");
}

TEST(ArtifactStore, MissingPathsAreReportedNotFatal) {
  testing::TempDir dir;
  make_file(dir.file("work/output/0.png"), "png");
  make_file(dir.file("work/plain"), "a file, not a folder");
  ArtifactStore store(dir.file("store"));
  auto saved = store.save("k", dir.file("work"), {"./models", "output", "plain/inside", "./models"});
  ASSERT_TRUE(saved.is_ok()) << saved.status().message();
  EXPECT_EQ(saved->missing, (std::vector<std::string>{"models", "plain/inside", "models"}));
  EXPECT_EQ(saved->entries.size(), 2u);

  make_link(dir.file("work"), dir.file("work-link"));
  auto through_link = store.save("whole", dir.file("work-link"), {"."});
  ASSERT_TRUE(through_link.is_ok()) << through_link.status().message();
  EXPECT_TRUE(through_link->missing.empty()) << "the working dir itself may be reached through a link";
  EXPECT_EQ(through_link->entries.size(), 3u);

  auto nothing = store.save("stopped-early", dir.file("no-such-dir"), {"output"});
  ASSERT_TRUE(nothing.is_ok()) << nothing.status().message();
  EXPECT_EQ(nothing->missing, std::vector<std::string>{"output"});
  EXPECT_TRUE(nothing->entries.empty());
  EXPECT_TRUE(store.restore("stopped-early", dir.file("dest")).is_ok());
}

// A save that fails half-way (here: one object cannot be stored because a regular file sits where
// its folder must go, which stops root too) writes no manifest and keeps the key's previous one.
TEST(ArtifactStore, FailedSaveLeavesNoManifestAndKeepsThePreviousOne) {
  testing::TempDir dir;
  const std::string work = dir.file("work");
  const std::string kept = "kept bytes", blocked = "bytes that cannot be stored";
  ASSERT_NE(sha256_of(kept).substr(0, 2), sha256_of(blocked).substr(0, 2));
  make_file(work + "/out/a.txt", kept);
  ArtifactStore store(dir.file("store"));
  ASSERT_TRUE(store.save("repo/run", work, {"out"}).is_ok());

  make_file(work + "/out/b.txt", blocked);
  make_file(fs::path(store.object_path(sha256_of(blocked))).parent_path().string(), "in the way");

  auto resaved = store.save("repo/run", work, {"out"});
  ASSERT_FALSE(resaved.is_ok());
  EXPECT_EQ(resaved.status().code(), base::StatusCode::kIoError);
  EXPECT_NE(resaved.status().message().find("saving artifact 'out/b.txt': "), std::string::npos)
      << resaved.status().message();
  auto previous = store.manifest("repo/run");
  ASSERT_TRUE(previous.is_ok() && previous->has_value());
  ASSERT_EQ((*previous)->entries.size(), 2u);
  EXPECT_EQ((*previous)->entries[1].path, "out/a.txt");

  auto fresh = store.save("repo/other-run", work, {"out"});
  ASSERT_FALSE(fresh.is_ok());
  EXPECT_FALSE(store.manifest("repo/other-run").value().has_value());
  EXPECT_EQ(store.restore("repo/other-run", dir.file("dest")).code(), base::StatusCode::kNotFound);
  EXPECT_EQ(store.keys().value(), std::vector<std::string>{"repo/run"});
  EXPECT_TRUE(fs::is_empty(store.root() + "/tmp")) << "the failed object's temporary is removed";
}

TEST(ArtifactStore, PartialAndCorruptManifests) {
  testing::TempDir dir;
  make_file(dir.file("work/x.txt"), "x");
  ArtifactStore store(dir.file("store"));
  auto saved = store.save("good", dir.file("work"), {"x.txt"});
  ASSERT_TRUE(saved.is_ok()) << saved.status().message();
  const std::string text = read_bytes(store.manifest_path("good"));

  // What an interrupted write leaves: a temporary beside the final name, never read as a manifest.
  make_file(store.manifest_path("half") + ".tmp.123.456", text.substr(0, text.size() / 2));
  EXPECT_FALSE(store.manifest("half").value().has_value());
  EXPECT_EQ(store.keys().value(), std::vector<std::string>{"good"});

  // The saved manifest with its entries swapped for `entries`.
  auto with_entries = [&](const char* entries) {
    nlohmann::json manifest = nlohmann::json::parse(text);
    manifest["entries"] = nlohmann::json::parse(entries);
    return manifest.dump();
  };
  const std::string x_sha = sha256_of("x");
  struct Case {
    const char* label;
    std::string contents;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"truncated", text.substr(0, text.size() / 2), "not valid JSON (a partly written file?)"},
      {"a list", "[1, 2]", "not a JSON object"},
      {"escaping path", with_entries(R"([{"path": "../etc/passwd", "type": "file", "mode": "0644", "size": 1,
                        "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}])"),
       "bad path '../etc/passwd'"},
      {"under a link", with_entries(R"([{"path": "out/passwd", "type": "file", "mode": "0644", "size": 1,
                         "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"},
                        {"path": "out", "type": "symlink", "mode": "0777", "target": "/etc"}])"),
       "'out/passwd' lies under the symlink 'out'"},
      {"bad digest", with_entries(R"([{"path": "x", "type": "file", "mode": "0644", "size": 1, "sha256": "../../x"}])"),
       "'x' has a bad sha256 or size"},
      {"bad mode", with_entries(R"([{"path": "x", "type": "directory", "mode": "rwx"}])"), "'x' has a bad mode 'rwx'"},
      {"bad type", with_entries(R"([{"path": "x", "type": "pipe", "mode": "0644"}])"),
       "'x' has an unknown type 'pipe'"},
      {"missing field", with_entries(R"([{"path": "x", "type": "file", "mode": "0644"}])"),
       "[json.exception.out_of_range.403] key 'size' not found"},
  };
  EXPECT_EQ(x_sha, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881");
  for (const Case& c : cases) {
    testing::write_text_file(store.manifest_path("bad"), c.contents);
    auto manifest = store.manifest("bad");
    ASSERT_FALSE(manifest.is_ok()) << c.label;
    EXPECT_EQ(manifest.status().code(), base::StatusCode::kDataLoss) << c.label;
    EXPECT_EQ(manifest.status().message(), store.manifest_path("bad") + ": corrupt artifact manifest: " + c.reason)
        << c.label;
  }
  EXPECT_EQ(store.restore("bad", dir.file("dest")).code(), base::StatusCode::kDataLoss);
  EXPECT_EQ(store.gc().status().code(), base::StatusCode::kDataLoss) << "gc stops rather than guess";
  EXPECT_EQ(object_names(store), std::vector<std::string>{sha256_of("x")});
}

TEST(ArtifactStore, RestoreChecksObjects) {
  testing::TempDir dir;
  make_file(dir.file("work/out/image.png"), "hello world");
  ArtifactStore store(dir.file("store"));
  ASSERT_TRUE(store.save("k", dir.file("work"), {"out"}).is_ok());
  const std::string object = store.object_path(sha256_of("hello world"));
  ASSERT_EQ(::chmod(object.c_str(), 0644), 0);

  make_file(object, "hello_world", 0444);  // same size, other bytes: only a digest can tell
  ASSERT_TRUE(store.restore("k", dir.file("unverified")).is_ok());
  EXPECT_EQ(read_bytes(dir.file("unverified/out/image.png")), "hello_world");

  base::Status verified = store.restore("k", dir.file("verified"), /*verify=*/true);
  EXPECT_EQ(verified.code(), base::StatusCode::kDataLoss);
  EXPECT_EQ(verified.message(), object + " (artifact 'out/image.png' of 'k'): object is corrupt: its sha256 is " +
                                    sha256_of("hello_world"));
  EXPECT_EQ(describe_tree(dir.file("verified")), (Tree{{"out", "directory 0755"}}))
      << "no half-written file, no temporary";

  ASSERT_EQ(::chmod(object.c_str(), 0644), 0);
  make_file(object, "hello", 0444);
  base::Status truncated = store.restore("k", dir.file("truncated"));
  EXPECT_EQ(truncated.code(), base::StatusCode::kDataLoss);
  EXPECT_EQ(truncated.message(), object + " (artifact 'out/image.png' of 'k'): object has 5 bytes, expected 11");

  fs::remove(object);
  base::Status missing = store.restore("k", dir.file("missing"));
  EXPECT_EQ(missing.code(), base::StatusCode::kDataLoss);
  EXPECT_EQ(missing.message(), object + " (artifact 'out/image.png' of 'k'): object is missing");

  EXPECT_EQ(store.restore("no-such-key", dir.file("dest")).code(), base::StatusCode::kNotFound);
}

TEST(ArtifactStore, RestoreReplacesWhateverIsInTheWay) {
  testing::TempDir dir;
  const std::string work = dir.file("work");
  make_file(work + "/out/a.txt", "new a");
  make_file(work + "/out/was_dir", "now a file");
  make_file(work + "/out/was_file/inner.txt", "inside");
  make_link("a.txt", work + "/out/was_plain");
  make_file(work + "/out/was_link", "a real file");
  ArtifactStore store(dir.file("store"));
  ASSERT_TRUE(store.save("k", work, {"out"}).is_ok());

  const std::string dest = dir.file("dest");
  make_file(dest + "/out/a.txt", "old a, longer than the new one", 0600);
  make_file(dest + "/out/was_dir/deep/x.txt", "gone");
  make_file(dest + "/out/was_file", "gone");
  make_file(dest + "/out/was_plain", "gone");
  make_link("/somewhere", dest + "/out/was_link");
  make_file(dest + "/out/extra.txt", "not ours, kept");

  ASSERT_TRUE(store.restore("k", dest).is_ok());
  Tree expected = describe_tree(work);
  expected["out/extra.txt"] = "file 0644 'not ours, kept'";
  EXPECT_EQ(describe_tree(dest), expected);
}

TEST(ArtifactStore, GcFreesExactlyTheUnreferencedObjects) {
  testing::TempDir dir;
  const std::string work = dir.file("work");
  make_file(work + "/one/only.bin", std::string(1000, '1'));
  make_file(work + "/one/shared.bin", "shared");
  make_file(work + "/two/only.bin", std::string(200, '2'));
  make_file(work + "/two/shared.bin", "shared");
  ArtifactStore store(dir.file("store"));
  EXPECT_EQ(store.gc().value(), 0) << "no store yet";
  ASSERT_TRUE(store.save("one", work, {"one"}).is_ok());
  ASSERT_TRUE(store.save("two", work, {"two"}).is_ok());
  EXPECT_EQ(object_names(store).size(), 3u);
  EXPECT_EQ(store.gc().value(), 0) << "everything is referenced";

  make_file(store.root() + "/tmp/object.tmp.1.2", std::string(50, 's'));  // left by a crash two hours ago
  const struct timeval two_hours_ago[2] = {{::time(nullptr) - 7200, 0}, {::time(nullptr) - 7200, 0}};
  ASSERT_EQ(::utimes((store.root() + "/tmp/object.tmp.1.2").c_str(), two_hours_ago), 0);
  make_file(store.root() + "/tmp/object.tmp.3.4", std::string(70, 'f'));  // a save in progress
  make_file(store.manifest_path("old") + ".tmp.5.6", "{");
  ASSERT_EQ(::utimes((store.manifest_path("old") + ".tmp.5.6").c_str(), two_hours_ago), 0);

  ASSERT_TRUE(store.remove("one").is_ok());
  EXPECT_EQ(store.remove("one").code(), base::StatusCode::kNotFound);
  auto freed = store.gc();
  ASSERT_TRUE(freed.is_ok()) << freed.status().message();
  EXPECT_EQ(*freed, 1000 + 50 + 1);
  std::vector<std::string> left = {sha256_of("shared"), sha256_of(std::string(200, '2'))};
  std::sort(left.begin(), left.end());
  EXPECT_EQ(object_names(store), left);
  EXPECT_TRUE(fs::exists(store.root() + "/tmp/object.tmp.3.4"));
  EXPECT_FALSE(fs::exists(store.root() + "/tmp/object.tmp.1.2"));
  EXPECT_FALSE(fs::exists(store.manifest_path("old") + ".tmp.5.6"));
  ASSERT_TRUE(store.restore("two", dir.file("dest"), /*verify=*/true).is_ok());
  EXPECT_EQ(read_bytes(dir.file("dest/two/shared.bin")), "shared");
}

TEST(ArtifactStore, PushThenRestoreFromTheOtherStore) {
  testing::TempDir dir;
  const std::string work = dir.file("work");
  make_run_tree(work);
  ::unlink((work + "/models/sd/fifo").c_str());
  ArtifactStore local(dir.file("local"));
  ArtifactStore remote(dir.file("remote"));
  ASSERT_TRUE(local.save("repo/run", work, {"models", "output"}).is_ok());
  EXPECT_EQ(local.push("nope", remote).code(), base::StatusCode::kNotFound);

  ASSERT_TRUE(local.push("repo/run", remote).is_ok());
  EXPECT_EQ(object_names(remote), object_names(local));
  ASSERT_TRUE(remote.restore("repo/run", dir.file("dest"), /*verify=*/true).is_ok());
  Tree expected = describe_tree(work);
  expected.erase("notes.txt");
  EXPECT_EQ(describe_tree(dir.file("dest")), expected);

  const std::string object = remote.object_path(sha256_of("png bytes"));
  const ino_t inode = inode_of(object);
  ASSERT_TRUE(local.push("repo/run", remote).is_ok());
  EXPECT_EQ(inode_of(object), inode) << "objects the other store holds are not copied again";

  // A damaged local object is caught on the way and the other store gets no manifest.
  const std::string damaged = local.object_path(sha256_of("png bytes"));
  ASSERT_EQ(::chmod(damaged.c_str(), 0644), 0);
  make_file(damaged, "png bytez");
  ArtifactStore third(dir.file("third"));
  base::Status pushed = local.push("repo/run", third);
  EXPECT_EQ(pushed.code(), base::StatusCode::kDataLoss);
  EXPECT_EQ(pushed.message(), damaged + " (artifact 'output/0.png' of 'repo/run'): object is corrupt: it holds 9 " +
                                  "bytes with sha256 " + sha256_of("png bytez") + ", not 9 bytes with sha256 " +
                                  sha256_of("png bytes"));
  EXPECT_FALSE(third.manifest("repo/run").value().has_value());
}

TEST(ArtifactStore, LargeFilesStreamThroughInChunks) {
  testing::TempDir dir;
  std::string bytes(5 * 1024 * 1024 + 123, '\0');
  uint64_t state = 88172645463325252ull;
  for (char& c : bytes) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    c = static_cast<char>(state);
  }
  make_file(dir.file("work/model.safetensors"), bytes);
  ArtifactStore store(dir.file("store"));
  auto saved = store.save("k", dir.file("work"), {"model.safetensors"});
  ASSERT_TRUE(saved.is_ok()) << saved.status().message();
  EXPECT_EQ(saved->entries[0].size, static_cast<int64_t>(bytes.size()));
  EXPECT_EQ(saved->entries[0].sha256, base::sha256_file(dir.file("work/model.safetensors")).value());
  ASSERT_TRUE(store.restore("k", dir.file("dest"), /*verify=*/true).is_ok());
  EXPECT_TRUE(read_bytes(dir.file("dest/model.safetensors")) == bytes);
}

// A save racing gc: the key is removed and saved again, so between a save finding an object already
// stored and writing its manifest, nothing refers to that object. gc waits for saves in progress,
// so it never deletes one a manifest is about to name.
TEST(ArtifactStore, GcNeverDeletesWhatASaveInProgressCountsOn) {
  testing::TempDir dir;
  for (int i = 0; i < 50; ++i) make_file(dir.file("work/out/" + std::to_string(i)), "image " + std::to_string(i));
  ArtifactStore store(dir.file("store"));
  std::atomic<bool> saving = true;
  std::thread collector([&] {
    while (saving) ASSERT_TRUE(store.gc().is_ok());
  });
  std::string problem;
  for (int round = 0; round < 10 && problem.empty(); ++round) {
    auto saved = store.save("k", dir.file("work"), {"out"});
    if (!saved.is_ok()) {
      problem = saved.status().message();
      break;
    }
    for (const ArtifactEntry& entry : saved->entries) {
      if (entry.type == ArtifactEntry::Type::kFile && !fs::exists(store.object_path(entry.sha256))) {
        problem = "round " + std::to_string(round) + ": the object of " + entry.path + " is gone";
        break;
      }
    }
    if (!store.remove("k").is_ok()) problem = "remove failed";
  }
  saving = false;
  collector.join();
  EXPECT_EQ(problem, "");
}

}  // namespace
}  // namespace sdstack::flow

// Finding the project and snapshotting exactly what git considers part of it.
#include "flow/project.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "base/file.h"
#include "base/subprocess.h"
#include "testing/testing.h"

namespace sdstack::flow {
namespace {

using testing::TempDir;
using testing::git;
using testing::write_text_file;

TEST(ProjectTest, OutsideGitIsAClearError) {
  TempDir dir;
  auto project = find_project(dir.path());
  ASSERT_FALSE(project.is_ok());
  EXPECT_NE(project.status().message().find("is not in a git repository"), std::string::npos);
  EXPECT_NE(project.status().message().find("git init"), std::string::npos);
}

TEST(ProjectTest, TheNearestFolderWithWorkflowsIsTheProject) {
  TempDir dir;
  git(dir.path(), {"init", "-q"});
  std::filesystem::create_directories(dir.file("examples/sd/.sdstack/workflows"));
  std::filesystem::create_directories(dir.file("examples/sd/src"));
  auto nested = find_project(dir.file("examples/sd/src"));
  ASSERT_TRUE(nested.is_ok()) << nested.status().message();
  std::string root = std::filesystem::canonical(dir.path()).string();
  EXPECT_EQ(nested->dir, root + "/examples/sd");
  EXPECT_EQ(nested->git_root, root);
  EXPECT_EQ(nested->head, "");
  EXPECT_EQ(nested->remote_url, "");  // a remote is optional
  auto top = find_project(dir.file("examples"));
  ASSERT_TRUE(top.is_ok());
  EXPECT_EQ(top->dir, root);
}

TEST(ProjectTest, SnapshotHoldsHeadPlusChangesAndUntrackedButNotIgnored) {
  TempDir dir;
  git(dir.path(), {"init", "-q"});
  write_text_file(dir.file("committed.txt"), "v1");
  write_text_file(dir.file("deleted.txt"), "gone soon");
  write_text_file(dir.file(".gitignore"), "ignored/\n*.log\n");
  write_text_file(dir.file("run.sh"), "echo hi");
  chmod(dir.file("run.sh").c_str(), 0755);
  ASSERT_EQ(symlink("committed.txt", dir.file("link").c_str()), 0);
  git(dir.path(), {"add", "."});
  git(dir.path(), {"commit", "-q", "-m", "first"});
  git(dir.path(), {"remote", "add", "origin", "https://example.com/x.git"});
  write_text_file(dir.file("committed.txt"), "v2 uncommitted");
  std::filesystem::remove(dir.file("deleted.txt"));
  write_text_file(dir.file("new/untracked.txt"), "new");
  write_text_file(dir.file("ignored/big.bin"), "x");
  write_text_file(dir.file("debug.log"), "x");

  auto project = find_project(dir.path());
  ASSERT_TRUE(project.is_ok()) << project.status().message();
  EXPECT_EQ(project->head.size(), 40u);
  EXPECT_EQ(project->branch, "main");
  EXPECT_EQ(project->remote_url, "https://example.com/x.git");
  EXPECT_TRUE(project->dirty);

  TempDir dest;
  auto stats = snapshot_project(*project, dest.file("work"));
  ASSERT_TRUE(stats.is_ok()) << stats.status().message();
  EXPECT_EQ(*base::read_file(dest.file("work/committed.txt")), "v2 uncommitted");
  EXPECT_EQ(*base::read_file(dest.file("work/new/untracked.txt")), "new");
  EXPECT_FALSE(base::file_exists(dest.file("work/deleted.txt")));
  EXPECT_FALSE(base::file_exists(dest.file("work/ignored/big.bin")));
  EXPECT_FALSE(base::file_exists(dest.file("work/debug.log")));
  EXPECT_FALSE(base::file_exists(dest.file("work/.git")));
  EXPECT_EQ(std::filesystem::read_symlink(dest.file("work/link")).string(), "committed.txt");
  struct stat info;
  ASSERT_EQ(stat(dest.file("work/run.sh").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0755u);
  EXPECT_EQ(stats->files, 5);  // .gitignore, committed.txt, link, new/untracked.txt, run.sh
}

TEST(ProjectTest, SnapshotOfASubfolderProjectHoldsOnlyItsFiles) {
  TempDir dir;
  git(dir.path(), {"init", "-q"});
  write_text_file(dir.file("outside.txt"), "no");
  write_text_file(dir.file("sub/.sdstack/workflows/w.yaml"), "workflows: []\n");
  write_text_file(dir.file("sub/inside.txt"), "yes");
  auto project = find_project(dir.file("sub"));
  ASSERT_TRUE(project.is_ok());
  TempDir dest;
  ASSERT_TRUE(snapshot_project(*project, dest.path()).is_ok());
  EXPECT_TRUE(base::file_exists(dest.file("inside.txt")));
  EXPECT_TRUE(base::file_exists(dest.file(".sdstack/workflows/w.yaml")));
  EXPECT_FALSE(base::file_exists(dest.file("outside.txt")));
  EXPECT_FALSE(base::file_exists(dest.file("sub/inside.txt")));
}

}  // namespace
}  // namespace sdstack::flow

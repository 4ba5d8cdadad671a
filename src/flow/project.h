// The project a run is made from: the folder holding the workflow files, inside a git repository,
// and the snapshot of its files that each run works in.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace sdstack::flow {

struct Project {
  std::string dir;         // absolute: the folder with .sdstack/ or .dstack/ (else the git root); runs are per project
  std::string git_root;    // absolute
  std::string head;        // HEAD's commit ("" in a repo without commits)
  std::string branch;      // "" when detached or unborn
  std::string remote_url;  // origin's URL, "" without one: a remote is optional
  bool dirty = false;      // uncommitted changes or untracked files under dir
};

// Finds the project that `start_dir` is in: the nearest folder from start_dir up to the git root
// that has .sdstack/ or .dstack/, else the git root. NotFound, with a hint, outside a git
// repository or when git is not installed.
base::Result<Project> find_project(const std::string& start_dir);

struct SnapshotStats {
  int64_t files = 0;
  int64_t bytes = 0;
};

// Copies the project's files as they are now into `dest` (created; must be empty or absent):
// tracked files as in the working tree (HEAD plus uncommitted changes; deleted ones left out) and
// untracked files that git does not ignore, paths kept relative to project.dir. Symlinks are
// copied as links; submodules are left out. Nothing outside project.dir is copied.
base::Result<SnapshotStats> snapshot_project(const Project& project, const std::string& dest);

}  // namespace sdstack::flow

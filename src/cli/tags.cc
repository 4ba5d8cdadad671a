// `sdstack tags` and `sdstack artifacts`: naming runs' artifacts, listing, downloading, pushing them.
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "base/file.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/workspace.h"
#include "flow/remote_run.h"

namespace sdstack::cli {
namespace {

// A run's artifacts, fetched from the S3 store first when they are only there (a remote run's).
base::Result<flow::ArtifactManifest> manifest_of(Workspace& workspace, const flow::RunRecord& run) {
  const std::string key = flow::artifact_key(workspace.project.dir, run.name);
  base::Status available = flow::ensure_local_artifacts(workspace.layout, *workspace.artifacts, key);
  if (!available.is_ok() && available.code() != base::StatusCode::kNotFound) return available;
  SD_ASSIGN_OR_RETURN(auto manifest, workspace.artifacts->manifest(key));
  if (!manifest) {
    return base::not_found("run " + run.name + " has no saved artifacts (" +
                           std::string(flow::run_status_name(run.status)) +
                           (run.artifact_paths.empty() ? ", and its workflow declares none)" : ")"));
  }
  return *manifest;
}

// `tags add TAG -a PATH...`: the files become the artifacts of an "upload" run the tag names.
base::Result<std::string> upload_as_run(Workspace& workspace, const std::vector<std::string>& paths) {
  flow::RunRecord record;
  record.repo = workspace.project.dir;
  record.provider = "upload";
  record.artifact_paths = paths;
  record.repo_head = workspace.project.head;
  SD_ASSIGN_OR_RETURN(record, workspace.store->create_run(record));
  std::error_code error;
  std::string cwd = std::filesystem::current_path(error).string();
  auto saved = workspace.artifacts->save(flow::artifact_key(workspace.project.dir, record.name), cwd, paths);
  base::Status status = saved.is_ok() ? base::Status::ok() : saved.status();
  if (status.is_ok() && !saved->missing.empty()) {
    (void)workspace.artifacts->remove(flow::artifact_key(workspace.project.dir, record.name));
    status = base::not_found("no such file or folder: " + saved->missing.front());
  }
  if (status.is_ok()) {
    SD_ASSIGN_OR_RETURN(bool moved, workspace.store->transition(record.repo, record.name, {flow::RunStatus::kSubmitted},
                                                                flow::RunStatus::kDone, 0, ""));
    (void)moved;
    return record.name;
  }
  (void)workspace.store->delete_run(record.repo, record.name);
  return status;
}

}  // namespace

int run_tags(int argc, char** argv) {
  CLI::App app("Tags name runs, so that their artifacts can be deps (`- tag: TAG`) and downloaded by name.", argv[0]);
  app.require_subcommand(1);
  CLI::App* list = app.add_subcommand("list", "List the project's tags");
  CLI::App* add = app.add_subcommand("add", "Tag a finished run, or upload local files as a tag (-a PATH)");
  std::string tag, run_name;
  std::vector<std::string> paths;
  add->add_option("tag", tag, "The tag")->required();
  add->add_option("run", run_name, "The run to tag");
  add->add_option("-a,--artifact", paths, "A local file or folder to upload as the tag's artifacts (repeatable)");
  CLI::App* remove = app.add_subcommand("delete", "Delete a tag (the run and its artifacts stay)");
  remove->add_option("tag", tag, "The tag")->required();
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  const std::string& dir = workspace->project.dir;

  if (list->parsed()) {
    auto tags = workspace->store->list_tags(dir);
    if (!tags.is_ok()) return report(tags.status());
    std::printf("%-20s %-24s %-20s %s\n", "TAG", "RUN", "WORKFLOW", "ARTIFACTS");
    for (const auto& [name, run] : *tags) {
      auto record = workspace->store->get_run(dir, run);
      auto manifest = workspace->artifacts->manifest(flow::artifact_key(dir, run));
      std::string artifacts = manifest.is_ok() && *manifest ? flow::format_bytes((*manifest)->total_bytes) : "-";
      std::string workflow = record.is_ok() ? (record->workflow.empty() ? "(upload)" : record->workflow) : "?";
      std::printf("%-20s %-24s %-20s %s\n", name.c_str(), run.c_str(), workflow.c_str(), artifacts.c_str());
    }
    return 0;
  }
  if (add->parsed()) {
    if (run_name.empty() == paths.empty()) {
      return report(base::invalid_argument("tags add: name a run (`sdstack tags add " + tag +
                                           " RUN`) or local files (`sdstack tags add " + tag + " -a PATH`), not both"));
    }
    if (!paths.empty()) {
      auto taken = workspace->store->tagged_run(dir, tag);
      if (!taken.is_ok()) return report(taken.status());
      if (*taken) return report(workspace->store->add_tag(dir, tag, **taken));  // the store's message says which run
      auto uploaded = upload_as_run(*workspace, paths);
      if (!uploaded.is_ok()) return report(uploaded.status());
      run_name = *uploaded;
    } else {
      auto run = find_run(*workspace, run_name);
      if (!run.is_ok()) return report(run.status());
      if (!flow::is_finished(run->status)) {
        return report(base::invalid_argument("run " + run->name + " is " +
                                             std::string(flow::run_status_name(run->status)) +
                                             ": tag it once it has finished"));
      }
    }
    if (base::Status added = workspace->store->add_tag(dir, tag, run_name); !added.is_ok()) return report(added);
    std::printf("tagged %s as %s\n", run_name.c_str(), tag.c_str());
    return 0;
  }
  if (base::Status deleted = workspace->store->delete_tag(dir, tag); !deleted.is_ok()) return report(deleted);
  std::printf("deleted tag %s\n", tag.c_str());
  return 0;
}

int run_artifacts(int argc, char** argv) {
  CLI::App app("A run's saved artifacts (RUN, or :TAG for the run a tag names).", argv[0]);
  app.require_subcommand(1);
  std::string reference, to = ".";
  bool verify = false;
  CLI::App* list = app.add_subcommand("list", "List a run's artifacts: type, size, path");
  list->add_option("run", reference, "The run (or :TAG)")->required();
  CLI::App* download = app.add_subcommand("download", "Copy a run's artifacts into a folder");
  download->add_option("run", reference, "The run (or :TAG)")->required();
  download->add_option("-o,--to", to, "The folder (default: the current one)")->capture_default_str();
  download->add_flag("--verify", verify, "Check every file's sha256 against the store's record");
  CLI::App* push = app.add_subcommand("push", "Copy a run's artifacts to another artifact store (a shared folder)");
  push->add_option("run", reference, "The run (or :TAG)")->required();
  push->add_option("--to", to, "The other store's folder (an sdstack store, e.g. on shared storage)")->required();
  if (int status = parse_arguments(app, argc, argv); status >= 0) return status;
  auto workspace = open_workspace();
  if (!workspace.is_ok()) return report(workspace.status());
  auto run = find_run(*workspace, reference);
  if (!run.is_ok()) return report(run.status());
  auto manifest = manifest_of(*workspace, *run);
  if (!manifest.is_ok()) return report(manifest.status());
  const std::string key = flow::artifact_key(workspace->project.dir, run->name);

  if (list->parsed()) {
    for (const flow::ArtifactEntry& entry : manifest->entries) {
      switch (entry.type) {
        case flow::ArtifactEntry::Type::kDirectory:
          std::printf("dir   %12s  %s/\n", "-", entry.path.c_str());
          break;
        case flow::ArtifactEntry::Type::kSymlink:
          std::printf("link  %12s  %s -> %s\n", "-", entry.path.c_str(), entry.link_target.c_str());
          break;
        case flow::ArtifactEntry::Type::kFile:
          std::printf("file  %12lld  %s\n", static_cast<long long>(entry.size), entry.path.c_str());
          break;
      }
    }
    std::printf("%zu entries, %s\n", manifest->entries.size(), flow::format_bytes(manifest->total_bytes).c_str());
    return 0;
  }
  if (download->parsed()) {
    if (base::Status restored = workspace->artifacts->restore(key, to, verify); !restored.is_ok()) return report(restored);
    std::printf("%s: %zu entries (%s) in %s\n", run->name.c_str(), manifest->entries.size(),
                flow::format_bytes(manifest->total_bytes).c_str(), to.c_str());
    return 0;
  }
  flow::ArtifactStore other(base::join_path(to, "artifacts"));
  if (base::Status pushed = workspace->artifacts->push(key, other); !pushed.is_ok()) return report(pushed);
  std::printf("%s: artifacts pushed to %s\n", run->name.c_str(), other.root().c_str());
  return 0;
}

}  // namespace sdstack::cli

// A repo's set of workflows: finding the files, checks across them (names, deps, cycles), dep order.
#include <algorithm>
#include <filesystem>
#include <map>

#include "base/file.h"
#include "base/strings.h"
#include "flow/spec.h"

namespace sdstack::flow {

using base::Result;
using base::Status;

namespace {

// The workflow files in `folder` (relative to the repo root), by name; none when it is missing.
Result<std::vector<std::string>> yaml_files_in(const std::string& repo_root, const std::string& folder) {
  std::vector<std::string> files;
  const std::filesystem::path dir = std::filesystem::path(repo_root) / folder;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string extension = entry.path().extension().string();
    if (entry.is_regular_file(ec) && (extension == ".yaml" || extension == ".yml")) {
      files.push_back(folder + "/" + entry.path().filename().string());
    }
  }
  if (ec) return base::io_error(folder + ": cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

std::map<std::string, size_t> index_by_name(const std::vector<WorkflowSpec>& workflows) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < workflows.size(); ++i) index.emplace(workflows[i].name, i);
  return index;
}

std::vector<std::string> names_of(const std::vector<WorkflowSpec>& workflows) {
  std::vector<std::string> names;
  for (const WorkflowSpec& workflow : workflows) names.push_back(workflow.name);
  return names;
}

// Depth-first walk of `- workflow:` deps. Every workflow's deps must be known (validate first).
class DepWalker {
 public:
  explicit DepWalker(const std::vector<WorkflowSpec>& workflows)
      : workflows_(workflows), index_(index_by_name(workflows)), state_(workflows.size(), kUnseen) {}

  // Appends `start` and what it needs to `order_`, deps first; an error names the first cycle met.
  Status visit(size_t start) {
    if (state_[start] == kDone) return Status::ok();
    state_[start] = kOnPath;
    for (const Dep& dep : workflows_[start].deps) {
      if (dep.kind != Dep::Kind::kWorkflow) continue;
      const size_t next = index_.at(dep.name);
      if (state_[next] == kOnPath) return cycle_error(next, start, dep);
      path_.push_back({start, &dep});
      SD_RETURN_IF_ERROR(visit(next));
      path_.pop_back();
    }
    state_[start] = kDone;
    order_.push_back(workflows_[start].name);
    return Status::ok();
  }

  const std::vector<std::string>& order() const { return order_; }

 private:
  enum State { kUnseen, kOnPath, kDone };
  struct Step {
    size_t workflow;
    const Dep* dep;  // the dep followed out of `workflow`
  };

  // The cycle runs from `first` along path_ to `last`, whose `closing` dep leads back to `first`.
  // It is reported at the first dep of the cycle: "a -> b -> a".
  Status cycle_error(size_t first, size_t last, const Dep& closing) const {
    std::vector<std::string> names;
    const Dep* first_dep = &closing;
    bool in_cycle = false;
    for (const Step& step : path_) {
      if (step.workflow == first && !in_cycle) {
        in_cycle = true;
        first_dep = step.dep;
      }
      if (in_cycle) names.push_back(workflows_[step.workflow].name);
    }
    names.push_back(workflows_[last].name);
    names.push_back(workflows_[first].name);
    return base::invalid_argument(first_dep->where.to_string() + ": cyclic deps: " + base::join(names, " -> "));
  }

  const std::vector<WorkflowSpec>& workflows_;
  std::map<std::string, size_t> index_;
  std::vector<State> state_;
  std::vector<Step> path_;
  std::vector<std::string> order_;
};

}  // namespace

Status validate_workflows(const std::vector<WorkflowSpec>& workflows) {
  std::map<std::string, size_t> first_seen;
  for (size_t i = 0; i < workflows.size(); ++i) {
    auto [it, inserted] = first_seen.emplace(workflows[i].name, i);
    if (!inserted) {
      return base::invalid_argument(workflows[i].where.to_string() + ": duplicate workflow name '" +
                                    workflows[i].name + "' (first defined at " +
                                    workflows[it->second].where.to_string() + ")");
    }
  }
  const std::vector<std::string> names = names_of(workflows);
  for (const WorkflowSpec& workflow : workflows) {
    for (const Dep& dep : workflow.deps) {
      if (dep.kind != Dep::Kind::kWorkflow || first_seen.count(dep.name)) continue;
      return base::invalid_argument(dep.where.to_string() + ": workflow '" + workflow.name +
                                    "' depends on unknown workflow '" + dep.name + "'" +
                                    base::did_you_mean(dep.name, names));
    }
  }
  DepWalker walker(workflows);
  for (size_t i = 0; i < workflows.size(); ++i) SD_RETURN_IF_ERROR(walker.visit(i));
  return Status::ok();
}

Result<std::vector<WorkflowSpec>> load_workflows(const std::string& repo_root) {
  std::vector<std::string> files;
  for (const char* folder : {".sdstack/workflows", ".dstack/workflows"}) {
    SD_ASSIGN_OR_RETURN(std::vector<std::string> found, yaml_files_in(repo_root, folder));
    files.insert(files.end(), found.begin(), found.end());
  }
  if (base::file_exists(base::join_path(repo_root, ".dstack/workflows.yaml"))) {
    files.push_back(".dstack/workflows.yaml");
  }
  std::vector<WorkflowSpec> workflows;
  for (const std::string& file : files) {
    SD_ASSIGN_OR_RETURN(std::string text, base::read_file(base::join_path(repo_root, file)));
    SD_ASSIGN_OR_RETURN(std::vector<WorkflowSpec> parsed, parse_workflows(text, file));
    for (WorkflowSpec& workflow : parsed) workflows.push_back(std::move(workflow));
  }
  SD_RETURN_IF_ERROR(validate_workflows(workflows));
  return workflows;
}

Result<std::vector<std::string>> dependency_order(const std::vector<WorkflowSpec>& workflows,
                                                  const std::string& name) {
  const std::map<std::string, size_t> index = index_by_name(workflows);
  auto it = index.find(name);
  if (it == index.end()) {
    return base::not_found("no workflow named '" + name + "'" + base::did_you_mean(name, names_of(workflows)));
  }
  SD_RETURN_IF_ERROR(validate_workflows(workflows));
  DepWalker walker(workflows);
  SD_RETURN_IF_ERROR(walker.visit(it->second));
  return walker.order();
}

}  // namespace sdstack::flow

// Workflow files in, parsed specs or the exact error out: a table of YAML cases in temp repos.
#include "flow/spec.h"

#include <filesystem>
#include <utility>

#include "testing/testing.h"

namespace sdstack::flow {
namespace {

using FileList = std::vector<std::pair<std::string, std::string>>;  // path in the repo, contents

// Writes `files` into a fresh repo and loads its workflows.
base::Result<std::vector<WorkflowSpec>> load(const testing::TempDir& repo, const FileList& files) {
  for (const auto& [path, contents] : files) {
    std::filesystem::create_directories(std::filesystem::path(repo.file(path)).parent_path());
    testing::write_text_file(repo.file(path), contents);
  }
  return load_workflows(repo.path());
}

const char kSeed[] = R"(workflows:
  - name: stable-diffusion
    provider: bash
    commands:
      - sdstack pull runwayml/stable-diffusion-v1-5 --to ./models/runwayml/stable-diffusion-v1-5
    artifacts:
      - path: ./models
    resources:
      memory: 16GB

  - name: prompt-stable
    provider: bash
    deps:
      - workflow: stable-diffusion
    commands:
      - sdstack generate ${{ run.args }}
    artifacts:
      - path: ./output
    resources:
      gpu: 1
)";

TEST(WorkflowSpec, SeedFileParses) {
  testing::TempDir repo;
  auto workflows = load(repo, {{".dstack/workflows/stable-diffusion.yaml", kSeed}});
  ASSERT_TRUE(workflows.is_ok()) << workflows.status().message();
  ASSERT_EQ(workflows->size(), 2u);
  const WorkflowSpec& pull = (*workflows)[0];
  EXPECT_EQ(pull.name, "stable-diffusion");
  EXPECT_EQ(pull.provider, Provider::kBash);
  EXPECT_EQ(pull.commands, std::vector<std::string>{
                               "sdstack pull runwayml/stable-diffusion-v1-5 --to ./models/runwayml/stable-diffusion-v1-5"});
  ASSERT_EQ(pull.artifacts.size(), 1u);
  EXPECT_EQ(pull.artifacts[0].path, "./models");
  EXPECT_FALSE(pull.artifacts[0].mount);
  EXPECT_EQ(pull.resources.memory_bytes, 16'000'000'000);
  EXPECT_EQ(pull.resources.gpu.count, 0);
  EXPECT_EQ(pull.where.to_string(), ".dstack/workflows/stable-diffusion.yaml:2:11");

  const WorkflowSpec& prompt = (*workflows)[1];
  EXPECT_EQ(prompt.name, "prompt-stable");
  ASSERT_EQ(prompt.deps.size(), 1u);
  EXPECT_EQ(prompt.deps[0].kind, Dep::Kind::kWorkflow);
  EXPECT_EQ(prompt.deps[0].name, "stable-diffusion");
  EXPECT_EQ(prompt.commands, std::vector<std::string>{"sdstack generate ${{ run.args }}"});
  EXPECT_EQ(prompt.artifacts[0].path, "./output");
  EXPECT_EQ(prompt.resources.gpu.count, 1);
  EXPECT_EQ(prompt.resources.memory_bytes, 0);

  auto order = dependency_order(*workflows, "prompt-stable");
  ASSERT_TRUE(order.is_ok()) << order.status().message();
  EXPECT_EQ(*order, (std::vector<std::string>{"stable-diffusion", "prompt-stable"}));
}

TEST(WorkflowSpec, EveryFieldParses) {
  testing::TempDir repo;
  auto workflows = load(repo, {{".sdstack/workflows/all.yaml", R"(workflows:
  - name: train
    help: Trains it
    provider: docker
    image: python:3.11
    setup: [pip install -r requirements.txt]
    commands: [python train.py]
    deps:
      - tag: base-model
    artifacts:
      - path: ./checkpoints
        mount: true
      - ./logs
    resources:
      cpu: 8
      memory: 1.5GiB
      gpu: {name: A100, memory: 40GB}
      shm_size: 512MB
      interruptible: true
    env: [HF_HOME=/cache, EMPTY=, TOKEN]
    working_dir: src
    ports: [8080, 6006]
  - name: ide
    provider: code
    ports: 2
)"}});
  ASSERT_TRUE(workflows.is_ok()) << workflows.status().message();
  ASSERT_EQ(workflows->size(), 2u);
  const WorkflowSpec& train = (*workflows)[0];
  EXPECT_EQ(train.help, "Trains it");
  EXPECT_EQ(train.provider, Provider::kDocker);
  EXPECT_EQ(train.image, "python:3.11");
  EXPECT_EQ(train.setup, std::vector<std::string>{"pip install -r requirements.txt"});
  EXPECT_EQ(train.deps[0].kind, Dep::Kind::kTag);
  EXPECT_EQ(train.deps[0].name, "base-model");
  ASSERT_EQ(train.artifacts.size(), 2u);
  EXPECT_TRUE(train.artifacts[0].mount);
  EXPECT_EQ(train.artifacts[1].path, "./logs");
  EXPECT_EQ(train.resources.cpu, 8);
  EXPECT_EQ(train.resources.memory_bytes, 1610612736);
  EXPECT_EQ(train.resources.gpu.count, 1);
  EXPECT_EQ(train.resources.gpu.name, "A100");
  EXPECT_EQ(train.resources.gpu.memory_bytes, 40'000'000'000);
  EXPECT_EQ(train.resources.shm_size_bytes, 512'000'000);
  EXPECT_TRUE(train.resources.interruptible);
  ASSERT_EQ(train.env.size(), 3u);
  EXPECT_EQ(train.env[0].name, "HF_HOME");
  EXPECT_EQ(train.env[0].value, "/cache");
  EXPECT_EQ(train.env[1].value, "");
  EXPECT_EQ(train.env[2].name, "TOKEN");
  EXPECT_FALSE(train.env[2].value.has_value());
  EXPECT_EQ(train.working_dir, "src");
  EXPECT_EQ(train.ports, (std::vector<int>{8080, 6006}));
  EXPECT_EQ((*workflows)[1].provider, Provider::kCode);
  EXPECT_EQ((*workflows)[1].port_count, 2);
}

TEST(WorkflowSpec, FilesAreReadInOrderFromAllThreePlaces) {
  testing::TempDir repo;
  auto workflows = load(repo, {{".dstack/workflows.yaml", "workflows:\n  - name: c\n    commands: [true]\n"},
                               {".dstack/workflows/b.yaml", "workflows:\n  - name: b\n"},
                               {".sdstack/workflows/z.yml", "workflows:\n  - name: a2\n"},
                               {".sdstack/workflows/a.yaml", "workflows:\n  - name: a1\n"},
                               {".sdstack/workflows/notes.txt", "not a workflow"},
                               {".sdstack/workflows/empty.yaml", ""}});
  ASSERT_TRUE(workflows.is_ok()) << workflows.status().message();
  std::vector<std::string> names;
  for (const WorkflowSpec& workflow : *workflows) names.push_back(workflow.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a1", "a2", "b", "c"}));

  testing::TempDir empty_repo;
  auto none = load_workflows(empty_repo.path());
  ASSERT_TRUE(none.is_ok());
  EXPECT_TRUE(none->empty());
}

TEST(WorkflowSpec, DependencyOrderPutsEachDepFirst) {
  testing::TempDir repo;
  auto workflows = load(repo, {{".sdstack/workflows/deps.yaml", R"(workflows:
  - {name: d, deps: [{workflow: b}, {workflow: c}, {tag: t}]}
  - {name: b, deps: [{workflow: a}]}
  - {name: c, deps: [{workflow: a}]}
  - {name: a}
)"}});
  ASSERT_TRUE(workflows.is_ok()) << workflows.status().message();
  auto order = dependency_order(*workflows, "d");
  ASSERT_TRUE(order.is_ok()) << order.status().message();
  EXPECT_EQ(*order, (std::vector<std::string>{"a", "b", "c", "d"}));
  auto missing = dependency_order(*workflows, "dd");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), base::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "no workflow named 'dd' (did you mean 'd'?)");
}

struct ErrorCase {
  const char* label;
  FileList files;
  const char* expected;
};

const char kFile[] = ".sdstack/workflows/sd.yaml";

std::vector<ErrorCase> error_cases() {
  return {
      {"unknown key", {{kFile, "workflows:\n  - name: a\n    comands: [ls]\n"}},
       ".sdstack/workflows/sd.yaml:3:5: unknown key 'comands' (did you mean 'commands'?)"},
      {"unknown key far from any",
       {{kFile, "workflows:\n  - name: a\n    zzzzzzzz: 1\n"}},
       ".sdstack/workflows/sd.yaml:3:5: unknown key 'zzzzzzzz' (valid keys: name, help, provider, commands, "
       "setup, deps, artifacts, resources, env, working_dir, ports, image)"},
      {"unknown top-level key", {{kFile, "workflow:\n  - name: a\n"}},
       ".sdstack/workflows/sd.yaml:1:1: unknown key 'workflow' (did you mean 'workflows'?)"},
      {"repeated key", {{kFile, "workflows:\n  - name: a\n    help: x\n    help: y\n"}},
       ".sdstack/workflows/sd.yaml:4:5: key 'help' is given twice"},
      {"unknown resource key", {{kFile, "workflows:\n  - name: a\n    resources:\n      gpus: 1\n"}},
       ".sdstack/workflows/sd.yaml:4:7: unknown key 'gpus' (did you mean 'gpu'?)"},
      {"missing name", {{kFile, "workflows:\n  - help: no name\n    commands: [ls]\n"}},
       ".sdstack/workflows/sd.yaml:2:5: workflow without a 'name'"},
      {"name not a string", {{kFile, "workflows:\n  - name: [a, b]\n"}},
       ".sdstack/workflows/sd.yaml:2:11: 'name' must be a string, not a list"},
      {"bad name", {{kFile, "workflows:\n  - name: my flow\n"}},
       ".sdstack/workflows/sd.yaml:2:11: workflow name 'my flow' may hold only letters, digits, '-', '_' and '.'"},
      {"duplicate names across files",
       {{".sdstack/workflows/a.yaml", "workflows:\n  - name: sd\n"},
        {".sdstack/workflows/b.yaml", "workflows:\n  - name: x\n  - name: sd\n"}},
       ".sdstack/workflows/b.yaml:3:11: duplicate workflow name 'sd' (first defined at "
       ".sdstack/workflows/a.yaml:2:11)"},
      {"dep on unknown workflow",
       {{kFile, "workflows:\n  - name: stable-diffusion\n  - name: p\n    deps:\n      - workflow: stable-difusion\n"}},
       ".sdstack/workflows/sd.yaml:5:19: workflow 'p' depends on unknown workflow 'stable-difusion' "
       "(did you mean 'stable-diffusion'?)"},
      {"cyclic deps",
       {{kFile, "workflows:\n  - name: a\n    deps: [{workflow: b}]\n  - name: b\n    deps: [{workflow: a}]\n"}},
       ".sdstack/workflows/sd.yaml:3:23: cyclic deps: a -> b -> a"},
      {"longer cycle below the root",
       {{kFile, "workflows:\n  - {name: top, deps: [{workflow: a}]}\n  - {name: a, deps: [{workflow: b}]}\n"
                "  - {name: b, deps: [{workflow: c}]}\n  - {name: c, deps: [{workflow: a}]}\n"}},
       ".sdstack/workflows/sd.yaml:3:33: cyclic deps: a -> b -> c -> a"},
      {"self dep", {{kFile, "workflows:\n  - name: a\n    deps: [{workflow: a}]\n"}},
       ".sdstack/workflows/sd.yaml:3:23: cyclic deps: a -> a"},
      {"dep neither workflow nor tag", {{kFile, "workflows:\n  - name: a\n    deps:\n      - workflow\n"}},
       ".sdstack/workflows/sd.yaml:4:9: a dep must be '- workflow: NAME' or '- tag: TAG', not 'workflow'"},
      {"bad memory unit", {{kFile, "workflows:\n  - name: a\n    resources:\n      memory: 16XB\n"}},
       ".sdstack/workflows/sd.yaml:4:15: 'memory': bad size '16XB': unknown unit; valid units are "
       "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"},
      {"memory without unit", {{kFile, "workflows:\n  - name: a\n    resources:\n      memory: 16\n"}},
       ".sdstack/workflows/sd.yaml:4:15: 'memory': bad size '16': a unit is needed "
       "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), like 16GB"},
      {"gpu memory not a number",
       {{kFile, "workflows:\n  - name: a\n    resources:\n      gpu:\n        memory: lots\n"}},
       ".sdstack/workflows/sd.yaml:5:17: 'memory': bad size 'lots': expected a number and a unit "
       "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), like 16GB"},
      {"cpu not a number", {{kFile, "workflows:\n  - name: a\n    resources:\n      cpu: four\n"}},
       ".sdstack/workflows/sd.yaml:4:12: 'cpu' must be a whole number, not 'four'"},
      {"gpu count negative", {{kFile, "workflows:\n  - name: a\n    resources:\n      gpu: -1\n"}},
       ".sdstack/workflows/sd.yaml:4:12: 'gpu' must be between 0 and 64, not -1"},
      {"interruptible not a bool",
       {{kFile, "workflows:\n  - name: a\n    resources:\n      interruptible: maybe\n"}},
       ".sdstack/workflows/sd.yaml:4:22: 'interruptible' must be true or false, not 'maybe'"},
      {"commands a string", {{kFile, "workflows:\n  - name: a\n    commands: ls -l\n"}},
       ".sdstack/workflows/sd.yaml:3:15: 'commands' must be a list of strings, not 'ls -l'"},
      {"command read as a map", {{kFile, "workflows:\n  - name: a\n    commands:\n      - echo note: hi\n"}},
       ".sdstack/workflows/sd.yaml:4:9: 'commands' must be a list of strings; this item is a map "
       "(quote an item that holds ': ')"},
      {"commands empty", {{kFile, "workflows:\n  - name: a\n    commands:\n"}},
       ".sdstack/workflows/sd.yaml:3:5: 'commands' has no value"},
      {"unknown provider", {{kFile, "workflows:\n  - name: a\n    provider: bahs\n"}},
       ".sdstack/workflows/sd.yaml:3:15: unknown provider 'bahs' (did you mean 'bash'?)"},
      {"unknown provider far from any", {{kFile, "workflows:\n  - name: a\n    provider: kubernetes\n"}},
       ".sdstack/workflows/sd.yaml:3:15: unknown provider 'kubernetes' "
       "(valid providers: bash, code, lab, notebook, docker)"},
      {"docker without image", {{kFile, "workflows:\n  - name: a\n    provider: docker\n"}},
       ".sdstack/workflows/sd.yaml:3:15: provider 'docker' needs an 'image'"},
      {"image without docker", {{kFile, "workflows:\n  - name: a\n    image: ubuntu\n"}},
       ".sdstack/workflows/sd.yaml:3:12: 'image' is only for provider 'docker', not 'bash'"},
      {"bad env entry", {{kFile, "workflows:\n  - name: a\n    env:\n      - 1X=2\n"}},
       ".sdstack/workflows/sd.yaml:4:9: bad env entry '1X=2': expected NAME=VALUE or NAME, NAME like MY_VAR"},
      {"artifact without path", {{kFile, "workflows:\n  - name: a\n    artifacts:\n      - mount: true\n"}},
       ".sdstack/workflows/sd.yaml:4:9: artifact without a 'path'"},
      {"port out of range", {{kFile, "workflows:\n  - name: a\n    ports: [80, 70000]\n"}},
       ".sdstack/workflows/sd.yaml:3:17: 'ports' must be between 1 and 65535, not 70000"},
      {"empty resource", {{kFile, "workflows:\n  - name: a\n    resources:\n      memory:\n      cpu: 2\n"}},
       ".sdstack/workflows/sd.yaml:4:7: 'memory' has no value"},
      {"workflows not a list", {{kFile, "workflows:\n  name: a\n"}},
       ".sdstack/workflows/sd.yaml:2:3: 'workflows' must be a list of workflows, not a map"},
      {"yaml syntax error", {{kFile, "workflows:\n  - name: a\n    commands: [ls\n"}},
       ".sdstack/workflows/sd.yaml:4:1: YAML syntax error: end of sequence flow not found"},
      {"yaml tab indentation", {{".dstack/workflows.yaml", "workflows:\n  - name: a\n\t commands: [ls]\n"}},
       ".dstack/workflows.yaml:3:1: YAML syntax error: illegal tab when looking for indentation"},
  };
}

TEST(WorkflowSpec, ErrorsSayWhereAndWhat) {
  for (const ErrorCase& error_case : error_cases()) {
    SCOPED_TRACE(error_case.label);
    testing::TempDir repo;
    auto workflows = load(repo, error_case.files);
    ASSERT_FALSE(workflows.is_ok());
    EXPECT_EQ(workflows.status().code(), base::StatusCode::kInvalidArgument);
    EXPECT_EQ(workflows.status().message(), error_case.expected);
  }
}

TEST(WorkflowSpec, ParseSize) {
  EXPECT_EQ(*parse_size("16GB"), 16'000'000'000);
  EXPECT_EQ(*parse_size("512MB"), 512'000'000);
  EXPECT_EQ(*parse_size("1.5GiB"), 1610612736);
  EXPECT_EQ(*parse_size("64 kib"), 65536);
  EXPECT_EQ(*parse_size("100B"), 100);
  EXPECT_FALSE(parse_size("GB").is_ok());
  EXPECT_FALSE(parse_size("-1GB").is_ok());
  EXPECT_FALSE(parse_size("1.2.3GB").is_ok());
}

}  // namespace
}  // namespace sdstack::flow

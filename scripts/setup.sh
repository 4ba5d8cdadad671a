#!/usr/bin/env bash
# Installs the Debian packages sdstack needs (when any is missing) and builds it in Release.
# Idempotent: a second run installs nothing and rebuilds only what changed.
# Usage: scripts/setup.sh [BUILD_DIR]   (default: build)
set -euo pipefail

cd "$(dirname "$0")/.."
build_dir="${1:-build}"

packages=(
  build-essential cmake ninja-build pkg-config git
  libdnnl-dev          # oneDNN: CPU convolutions, matmuls
  nlohmann-json3-dev   # JSON: configs, safetensors headers
  libcli11-dev         # command-line parsing
  libutf8proc-dev      # Unicode classes and NFC for the CLIP tokenizer
  libpng-dev           # PNG images
  libcurl4-openssl-dev # HTTP(S) for the Hugging Face Hub client (sdstack pull)
  libyaml-cpp-dev      # YAML: workflow files (.sdstack/workflows/*.yaml)
  libsqlite3-dev       # run history, names, tags, secrets
  bubblewrap           # the sandbox around local runs
  jupyter-notebook     # the code/notebook providers' IDE (when code-server is not installed)
  libgtest-dev libgmock-dev  # tests
  # The remote-run tests' engines, started by the tests on this machine (tests/remote/fixtures):
  openssh-server openssh-client iproute2             # two SSH hosts in network namespaces
  slurmctld slurmd slurm-client munge                # a one-node Slurm cluster
  swift swift-proxy swift-account swift-container swift-object python3-swift curl  # S3 (Swift)
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSDSTACK_WERROR=ON >/dev/null
cmake --build "$build_dir" --parallel "$(nproc)"
echo "setup: built $build_dir/sdstack"

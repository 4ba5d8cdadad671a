#!/usr/bin/env bash
# The main job: set up, then run the seed tutorial's workflows (examples/stable-diffusion) with the
# runner: `stable-diffusion` pulls runwayml/stable-diffusion-v1-5 into its ./models artifact (or,
# when the Hub can't be reached, makes a random-weight stand-in offline), `prompt-stable` generates
# output/0.png from a prompt (default "cats in hats"), and the image is downloaded to ./output.
# Usage: scripts/main-job.sh [PROMPT] [generate options...]
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh build
export PATH="$PWD/build:$PATH"
root="$PWD"
prompt="${1:-cats in hats}"
shift || true

cd examples/stable-diffusion
sdstack init
# The model is pulled once: later main jobs reuse the artifacts of the last successful pull.
if ! sdstack ps -a | awk '$2 == "stable-diffusion" && $4 == "done" { found = 1 } END { exit !found }'; then
  sdstack run stable-diffusion
fi
run=$(sdstack run -d prompt-stable -P "$prompt" "$@")
sdstack logs -f "$run"
if ! sdstack ps -a | awk -v run="$run" '$1 == run && $4 == "done" { found = 1 } END { exit !found }'; then
  echo "main-job: run $run did not finish: see \`sdstack logs $run\` in examples/stable-diffusion" >&2
  exit 1
fi
sdstack artifacts download "$run" --to "$root"
echo "main-job: $root/output/0.png (run $run)"

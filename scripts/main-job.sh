#!/usr/bin/env bash
# The main job: set up, then generate output/0.png from a prompt (default "cats in hats").
# Model: $SDSTACK_MODEL if set; else runwayml/stable-diffusion-v1-5 pulled from the Hugging Face Hub
# (into the shared cache; nothing is downloaded twice); else, when the Hub can't be reached, a small
# random-weight model that sdstack makes offline (models/sdstack-random-tiny).
# It becomes a workflow (`sdstack run`) when the runner lands.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh build
prompt="${1:-cats in hats}"
hub_model="runwayml/stable-diffusion-v1-5"

model="${SDSTACK_MODEL:-}"
if [[ -z "$model" ]]; then
  if build/sdstack pull "$hub_model" >/dev/null; then
    model="$hub_model"
  else
    model=models/sdstack-random-tiny
    echo "main-job: could not pull $hub_model; using a random-weight model (images will be noise-like)"
    if [[ ! -f "$model/model_index.json" ]]; then
      build/sdstack make-model --preset tiny --to "$model"
    fi
  fi
fi
build/sdstack generate --model "$model" -P "$prompt" --output output

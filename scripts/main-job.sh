#!/usr/bin/env bash
# The main job: set up, then generate output/0.png from a prompt (default "cats in hats").
# Model: $SDSTACK_MODEL if set; else models/runwayml/stable-diffusion-v1-5 if present; else a small
# random-weight model that sdstack makes offline (models/sdstack-random-tiny).
# It becomes a workflow (`sdstack run`) with the runner, and pulls the real model with `sdstack pull`.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh build
prompt="${1:-cats in hats}"

model="${SDSTACK_MODEL:-}"
if [[ -z "$model" ]]; then
  if [[ -f models/runwayml/stable-diffusion-v1-5/model_index.json ]]; then
    model=models/runwayml/stable-diffusion-v1-5
  else
    model=models/sdstack-random-tiny
    if [[ ! -f "$model/model_index.json" ]]; then
      echo "main-job: no real model here; making a random-weight one (images will be noise-like)"
      build/sdstack make-model --preset tiny --to "$model"
    fi
  fi
fi
build/sdstack generate --model "$model" -P "$prompt" --output output

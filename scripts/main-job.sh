#!/usr/bin/env bash
# The main job, as far as the engine goes today: set up, then tokenize and encode a prompt with
# the tiny test model (../shared/golden/tiny-sd), writing output/prompt_embeds.npy.
# Text-to-image (`sdstack generate`) and the workflow runner come with the next issues.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh build
model="${SDSTACK_MODEL:-../shared/golden/tiny-sd}"
prompt="${1:-cats in hats}"
mkdir -p output
build/sdstack tokenize --model "$model" -P "$prompt"
build/sdstack encode --model "$model" -P "$prompt" --out output/prompt_embeds.npy

#!/bin/bash
# How long `make serve` takes from a fresh clone and an empty store until each family route first answers 200:
# clones this checkout's HEAD into a scratch folder, runs `make serve` there (BENTOML_HOME in the scratch folder:
# your own store is not touched), polls every route every 5 s, prints each first answer's second, then stops it.
# Usage: scripts/first-answers.sh [SCRATCH_DIR]   (default /tmp/first-answers; needs port 3000 free; ~25 min)
scratch=${1:-/tmp/first-answers}
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$scratch" && mkdir -p "$scratch" && git clone -q "$repo" "$scratch/clone" || exit 1
cd "$scratch/clone" || exit 1
start=$(date +%s)
BENTOML_HOME="$scratch/bentoml" setsid make serve > "$scratch/serve.log" 2>&1 &
serving=$!  # the leader of a process group of its own: make, the training lanes and the server
trap 'kill -TERM -- -$serving 2>/dev/null; sleep 5' EXIT
url=http://127.0.0.1:3000
json=(-H 'Content-Type: application/json')
declare -A first
while [ ${#first[@]} -lt 5 ] && [ $(($(date +%s) - start)) -lt 3600 ]; do
  sleep 5
  now=$(($(date +%s) - start))
  answers() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$@")" = 200 ]; }
  [ -z "${first[setup]}" ] && grep -q "setup: ready" "$scratch/serve.log" && first[setup]=$now && echo "set-up $now s"
  [ -z "${first[image]}" ] && answers -F image=@loadtests/payloads/images/ankle-boot-0.png "$url/classify_image" &&
    first[image]=$now && echo "/classify_image $now s"
  [ -z "${first[forecast]}" ] && answers "${json[@]}" -d @loadtests/payloads/forecast_example.json "$url/forecast" &&
    first[forecast]=$now && echo "/forecast $now s"
  [ -z "${first[text]}" ] && answers "${json[@]}" -d '{"text": "a small dog"}' "$url/classify_text" &&
    first[text]=$now && echo "/classify_text $now s"
  [ -z "${first[generation]}" ] && answers "${json[@]}" -d '{"seed": 1}' "$url/generate_images" &&
    first[generation]=$now && echo "/generate_images $now s"
done
grep -a "is registered as" "$scratch/serve.log" | cut -c1-160

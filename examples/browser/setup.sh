#!/usr/bin/env bash
# Fill examples/browser/ for the demo: vendor/ (transformers.js + the onnxruntime-web wasm it runs on, from npm)
# and models/task/ (a standalone model folder). Both are .gitignored.
#   bash examples/browser/setup.sh MODEL_FOLDER [SITE]   MODEL_FOLDER: e.g. written by `adapterdeploy export-standalone`;
#                                                        SITE: where to put vendor/ and models/ (default: here)
# then: python3 -m http.server 8000 -d examples/browser   and open http://localhost:8000/
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="${1:?usage: setup.sh MODEL_FOLDER [SITE]}"
site="${2:-$here}"
js="$(bash "$here/../../scripts/install_js.sh")"   # prints the node_modules folder
rm -rf "$site/vendor" "$site/models/task"
mkdir -p "$site/vendor" "$site/models"
cp "$js/@huggingface/transformers/dist/transformers.min.js" "$site/vendor/"
# the onnxruntime-web build transformers.js was made with (nested when it differs from the top-level one)
ort="$js/@huggingface/transformers/node_modules/onnxruntime-web/dist"
[ -d "$ort" ] || ort="$js/onnxruntime-web/dist"
# device "wasm" loads the asyncify build
cp "$ort/ort-wasm-simd-threaded.asyncify.mjs" "$ort/ort-wasm-simd-threaded.asyncify.wasm" "$site/vendor/"
cp -r "$model" "$site/models/task"
[ "$site" = "$here" ] || cp "$here/index.html" "$here/app.js" "$here/encode.js" "$site/"
echo "ready: python3 -m http.server 8000 -d $site   then open http://localhost:8000/"

#!/usr/bin/env bash
# JavaScript runtimes for the standalone-folder tests and the browser demo, from npm, into a cache folder
# outside the repository (never committed): @huggingface/transformers (transformers.js: onnxruntime-node in
# Node, onnxruntime-web in the browser) and playwright-core (drives an installed Chromium; downloads no browser).
# Prints the node_modules folder on stdout. With --chromium, also installs Debian's chromium when missing
# (apt-get, as root). Exits non-zero when npm is unavailable or the install fails: callers skip their tests.
#   ADAPTERDEPLOY_JS_CACHE=dir   where to install (default ~/.cache/adapterdeploy/js)
set -euo pipefail
TRANSFORMERS_JS=4.3.2
PLAYWRIGHT_CORE=1.65.2
cache="${ADAPTERDEPLOY_JS_CACHE:-$HOME/.cache/adapterdeploy/js}"
if [ "${1:-}" = "--chromium" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (DEBIAN_FRONTEND=noninteractive timeout 150 apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
      || { timeout 60 apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive timeout 150 \
           apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }) \
      || echo "install_js: could not install chromium with apt-get; the browser test will skip" >&2
  else
    echo "install_js: chromium missing and not root (or no apt-get); the browser test will skip" >&2
  fi
fi
command -v npm >/dev/null 2>&1 || { echo "install_js: npm not found" >&2; exit 2; }
mkdir -p "$cache"
stamp="$cache/.installed-$TRANSFORMERS_JS-$PLAYWRIGHT_CORE"
# "type": "module": helper scripts copied beside node_modules (tests/js, examples/browser/encode.js) are ES modules
echo '{"private": true, "name": "adapterdeploy-js-cache", "type": "module"}' > "$cache/package.json"
if [ ! -f "$stamp" ]; then
  # --ignore-scripts: no postinstall downloads (onnxruntime-node ships its CPU binaries in the package).
  (cd "$cache" && timeout 300 npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
    --fetch-retries=1 --fetch-timeout=30000 \
    "@huggingface/transformers@$TRANSFORMERS_JS" "playwright-core@$PLAYWRIGHT_CORE" >&2)
  touch "$stamp"
fi
echo "$cache/node_modules"

#!/usr/bin/env bash
# The documentation site in CI: mkdocs build --strict, then the built site opened in headless Chromium.
# Output: build/docs/site/ (the site) and build/docs/screenshots/ (a PNG per checked page + report.json),
# the artifact a reviewer opens. Needs the docs extra (pip install ".[docs]").
# Without Chromium it installs Debian's package when it can (root and apt-get); when it cannot, the
# browser check fails under CI=true and is skipped, saying why, on a developer machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=build/docs
mkdir -p "$OUT"

have_browser() { "$PY" -c "import sys; sys.path.insert(0, 'tools'); import docs_browser_check as b; sys.exit(b.find_browser() is None)"; }
if ! have_browser; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (Debian package) for the browser check"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "docs_ci: apt-get could not install chromium"
  else
    echo "docs_ci: no Chromium and no way to install it here (needs root and apt-get)"
  fi
fi

echo "== mkdocs build --strict"
start=$(date +%s)
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet -d "$OUT/site"
echo "built $OUT/site in $(( $(date +%s) - start )) s"

echo "== headless Chromium: home page and a results page"
start=$(date +%s)
"$PY" tools/docs_browser_check.py "$OUT/site" --out "$OUT/screenshots"
echo "browser check in $(( $(date +%s) - start )) s; screenshots in $OUT/screenshots/"

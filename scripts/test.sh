#!/usr/bin/env bash
# The whole test suite from a fresh clone, Python and Node: installs the test
# dependencies (pip; npm ci from node/package-lock.json; Chromium from apt
# when run as root), builds libllama
# (cached in ~/.cache/mullama per pin and flags), fetches the test models
# (hash-checked, cached there too), then runs pytest and node's test runner.
# Both always run; the script fails if either does.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "test.sh: Node.js >= 18 is needed for the Node tests (apt-get install nodejs npm)" >&2; exit 1; }
python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
# tests/test_browser.py drives headless Chromium (Debian's package); it is skipped where none can be had
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
        || echo "test.sh: could not install chromium: the browser test will be skipped" >&2
fi
(cd node && npm ci --no-audit --no-fund --loglevel=error)
python3 scripts/build_lib.py
MULLAMA_TEST_SMOLLM=$(python3 -c "from mullama._download import ensure_model; print(ensure_model())")
MULLAMA_TEST_MINILM=$(python3 scripts/convert_minilm.py | tail -n 1)
export MULLAMA_TEST_SMOLLM MULLAMA_TEST_MINILM
status=0
python3 -m pytest -q "$@" || status=$?
(cd node && node --test --test-concurrency=1 test/*.test.js) || status=$?
exit $status

#!/usr/bin/env bash
# The whole test suite from a fresh clone: installs the test dependencies,
# builds libllama (cached in ~/.cache/mullama per pin and flags), fetches the
# test models (hash-checked, cached there too) and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
python3 scripts/build_lib.py
python3 -c "from mullama._download import ensure_model; print(ensure_model())"
python3 scripts/convert_minilm.py
python3 -m pytest -q "$@"

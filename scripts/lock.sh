#!/usr/bin/env bash
# Pin requirements.txt and requirements-dev.txt from pyproject.toml with uv (the version
# pinned in pyproject's dev extra). Existing pins are kept unless pyproject.toml rules them
# out; --upgrade moves every pin to the newest allowed release. --universal: the pins
# carry markers, so one file serves every Python >= 3.11 (requires-python). Needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
[ -x "$uv" ] || uv=uv
common=(--universal --custom-compile-command "bash scripts/lock.sh" --quiet "$@")
"$uv" pip compile pyproject.toml --extra redis -o requirements.txt "${common[@]}"
"$uv" pip compile pyproject.toml --extra redis --extra client --extra dev -o requirements-dev.txt "${common[@]}"

#!/usr/bin/env bash
# Mutation testing of the pure rules (frames, auth, origin, protocol, ratelimit,
# registry) with mutmut, against the fast unit tests; config in pyproject.toml's
# [tool.mutmut]. Runs in a temporary copy of the checkout, so the work tree is never
# touched and no mutants/ folder is left behind. Prints mutmut's summary and every
# surviving mutant; docs/testing.md lists the survivors and why each is equivalent.
# Takes a few minutes on 2 cores. Needs the dev venv: bash scripts/setup.sh --system
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/wsapp-mutation.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t "$work"
cd "$work"
"$root/.venv/bin/mutmut" run --max-children "${MUTMUT_CHILDREN:-2}" >mutmut.log 2>&1 || {
  tr '\r' '\n' <mutmut.log | tail -n 30
  exit 1
}
tr '\r' '\n' <mutmut.log | grep -E '^[^⠀-⣿]*[0-9]+/[0-9]+' | tail -n 1 || true
"$root/.venv/bin/mutmut" results 2>/dev/null | tee survivors.txt
killed=$(tr '\r' '\n' <mutmut.log | tail -n 2 | grep -oE '🎉 [0-9]+' | tail -n 1 | cut -d' ' -f2)
total=$(tr '\r' '\n' <mutmut.log | tail -n 2 | grep -oE '[0-9]+/[0-9]+' | tail -n 1 | cut -d/ -f2)
echo "killed ${killed:-?} of ${total:-?} mutants"

#!/usr/bin/env bash
# Mutation testing of the pure rules (frames, auth, origin, protocol, ratelimit,
# registry) with mutmut, against the fast unit tests; config in pyproject.toml's
# [tool.mutmut]. Runs in a temporary copy of the checkout, so the work tree is never
# touched and no mutants/ folder is left behind. Prints mutmut's summary and every
# surviving mutant; docs/testing.md lists the survivors and why each is equivalent.
# Takes a few minutes on 2 cores. Needs the dev venv: bash scripts/setup.sh --system
# MUTMUT_CHILDREN=N: parallel test runs (default 2). MUTMUT_KEEP=1: keep the copy and
# print its path, to look at a mutant there (cd <copy>; mutmut show NAME; see
# docs/testing.md). MUTMUT_REF=HEAD (any commit): that commit, not the work tree as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/wsapp-mutation.XXXXXX)
if [ "${MUTMUT_KEEP:-0}" = 1 ]; then
  trap 'echo "mutants kept in $work (cd there and run $root/.venv/bin/mutmut show NAME)"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi
if [ -n "${MUTMUT_REF:-}" ]; then  # a commit as committed, without the tree's changes
  git archive "$MUTMUT_REF" | tar -x -C "$work"
else
  git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t "$work"
fi
cd "$work"
"$root/.venv/bin/mutmut" run --max-children "${MUTMUT_CHILDREN:-2}" >mutmut.log 2>&1 || {
  tr '\r' '\n' <mutmut.log | tail -n 30
  exit 1
}
tr '\r' '\n' <mutmut.log | grep -aE '[0-9]+/[0-9]+' | tail -n 1 || true
"$root/.venv/bin/mutmut" results 2>/dev/null | tee survivors.txt
killed=$(tr '\r' '\n' <mutmut.log | tail -n 2 | grep -oE '🎉 [0-9]+' | tail -n 1 | cut -d' ' -f2)
total=$(tr '\r' '\n' <mutmut.log | tail -n 2 | grep -oE '[0-9]+/[0-9]+' | tail -n 1 | cut -d/ -f2)
echo "killed ${killed:-?} of ${total:-?} mutants"

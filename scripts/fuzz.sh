#!/usr/bin/env bash
# Runs every fuzz target in the module for the given time (default 10s).
# A finding fails at once and shows the failing input's file. Go's fuzzing
# engine can also fail by itself (a worker it judged hung on a loaded
# machine, a lost coordinator pipe) without a finding: that is shown, and
# the target is run once more.
set -euo pipefail
t=${1:-10s}
go=${GO:-go}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for pkg in $($go list ./...); do
  dir=$($go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    for try in 1 2; do
      echo "fuzz $pkg $f ($t)"
      if $go test -run='^$' -fuzz="^$f\$" -fuzztime="$t" "$pkg" >"$out" 2>&1; then
        break
      fi
      tail -30 "$out"
      if grep -q 'Failing input written to' "$out" || [ "$try" = 2 ]; then
        exit 1
      fi
      echo "fuzz: $f failed without a finding; once more"
    done
  done
done

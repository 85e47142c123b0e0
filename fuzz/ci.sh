#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on any crash (panic, abort, leak of the
# time/memory limits). Called by .ci/run as `bash fuzz/ci.sh`.
#
# Works on the stable toolchain with no extra download: the targets are built with plain cargo and
# the same coverage instrumentation cargo-fuzz uses (SanitizerCoverage via `-Cpasses=sancov-module`,
# stable codegen options) plus `--cfg fuzzing`, debug assertions and overflow checks; libFuzzer
# itself comes from the `libfuzzer-sys` crate (built with the system C++ compiler). No
# AddressSanitizer: that needs a nightly flag, and the code under test is safe Rust (crypto and
# engine are `#![forbid(unsafe_code)]`), where a bug shows up as a panic, which libFuzzer catches.
# For ASan runs use cargo-fuzz: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target>`.
#
# Environment:
#   FUZZ_SECONDS   time per target (default 15; 7 targets => under 2 minutes of fuzzing)
#   FUZZ_TARGETS   space-separated subset (default: every [[bin]] in fuzz/Cargo.toml)
#   FUZZ_JOBS      parallel targets (default 2, one per core of the CI machine)
#
# The committed corpora (fuzz/corpus/<target>/) are read-only seeds: new inputs go to a temporary
# directory, crash reproducers to fuzz/artifacts/<target>/ (ignored by git), and the script prints
# one line per target: executions, seconds, executions per second, corpus size, coverage.
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECONDS:-15}
# A fixed seed makes CI's exploration repeatable: a crash it reports is reproducible from the same
# commit, and an unrelated change cannot fail CI by luck. Explore with other seeds locally
# (FUZZ_SEED=random picks libFuzzer's own) and commit what you find to the corpus.
seed=${FUZZ_SEED:-1}
[ "$seed" = random ] && seed=0
jobs=${FUZZ_JOBS:-2}
host=$(rustc -vV | sed -n 's/^host: //p')

if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz/ci.sh: installing a C++ compiler (libFuzzer is C++)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
  else
    echo "fuzz/ci.sh: no c++ compiler and cannot install one (need root + apt-get)" >&2
    exit 1
  fi
fi

targets=${FUZZ_TARGETS:-$(sed -n '/^\[\[bin\]\]/,/^$/ s/^name = "\(.*\)"/\1/p' Cargo.toml)}

# cargo-fuzz's instrumentation flags (cargo-fuzz 0.13, `--sanitizer none`), all stable.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# A target dir of its own, so this never rebuilds (or is rebuilt by) local cargo-fuzz ASan builds.
export CARGO_TARGET_DIR="$PWD/target/ci"
export CARGO_TERM_COLOR=never
mkdir -p "$CARGO_TARGET_DIR"

start=$(date +%s)
echo "== fuzz: building $(echo "$targets" | wc -w) targets"
bins=()
for t in $targets; do bins+=(--bin "$t"); done
if ! cargo build --release --target "$host" "${bins[@]}" >"$CARGO_TARGET_DIR.build.log" 2>&1; then
  cat "$CARGO_TARGET_DIR.build.log"
  exit 1
fi
echo "== fuzz: built in $(( $(date +%s) - start )) s; running each target for ${secs} s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run_one() {
  local t=$1
  local bin="$CARGO_TARGET_DIR/$host/release/$t"
  local seeds="corpus/$t"
  mkdir -p "$work/$t" "artifacts/$t"
  [ -d "$seeds" ] || seeds=""
  if "$bin" -seed="$seed" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="artifacts/$t/" "$work/$t" $seeds >"$work/$t.log" 2>&1; then
    local runs cov
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1 | cut -d' ' -f2)
    printf '%-22s ok   %10s execs in %s s (%s/s), corpus %s, cov %s\n' "$t" "${runs:-?}" "$secs" \
      "$(( ${runs:-0} / secs ))" "$(ls "$work/$t" | wc -l)" "${cov:-?}"
  else
    printf '%-22s FAIL (crash reproducer in fuzz/artifacts/%s/)\n' "$t" "$t"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$work/$t.log" | head -20
    return 1
  fi
}
export -f run_one
export secs seed host work

failed=0
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run_one {}' || failed=1
echo "== fuzz: done in $(( $(date +%s) - start )) s"
if [ "$failed" -ne 0 ]; then
  echo "fuzz/ci.sh: a target crashed" >&2
  exit 1
fi

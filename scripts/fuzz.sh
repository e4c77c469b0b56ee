#!/usr/bin/env bash
# Coverage-guided fuzzing of korvid's untrusted-input parsers with libFuzzer, on the stable
# toolchain (docs/fuzzing.md says why not cargo-fuzz).
#
#   scripts/fuzz.sh                     build, then run every target for FUZZ_SECONDS (20) each
#   scripts/fuzz.sh codec manifest      only these targets
#   scripts/fuzz.sh --build-only        build, run nothing
#   scripts/fuzz.sh --no-build codec    run what was built last
#
# Environment: FUZZ_SECONDS, FUZZ_ARGS (more libFuzzer flags), CARGO (e.g. "flock LOCK cargo"),
# KORVID_FUZZ_TARGET (the separate cargo target dir), KORVID_FUZZ_CORPUS, KORVID_FUZZ_ARTIFACTS.
# Exits non-zero when a target crashes (panic, abort, stack overflow, timeout or out of memory),
# naming the input and the command that reproduces it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir=$root/fuzz
target_dir=${KORVID_FUZZ_TARGET:-$HOME/.cache/korvid/target-fuzz}
corpus_root=${KORVID_FUZZ_CORPUS:-$HOME/.cache/korvid/fuzz-corpus}
artifacts_root=${KORVID_FUZZ_ARTIFACTS:-$HOME/.cache/korvid/fuzz-artifacts}
seconds=${FUZZ_SECONDS:-20}
cargo=${CARGO:-cargo}

build=1
run=1
targets=()
for arg in "$@"; do
  case $arg in
    --build-only) run=0 ;;
    --no-build) build=0 ;;
    -h | --help)
      sed -n '2,13s/^# \{0,1\}//p' "$0"
      exit 0
      ;;
    -*)
      echo "fuzz: unknown option $arg" >&2
      exit 2
      ;;
    *) targets+=("$arg") ;;
  esac
done
all_targets=()
for f in "$fuzz_dir"/fuzz_targets/*.rs; do
  all_targets+=("$(basename "$f" .rs)")
done
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
  if [ ! -f "$fuzz_dir/fuzz_targets/$t.rs" ]; then
    echo "fuzz: no target $t (have: ${all_targets[*]})" >&2
    exit 2
  fi
done

# What cargo-fuzz passes, less its nightly-only `-Zsanitizer=address`: SanitizerCoverage
# counters, PC table and comparison tracing for libFuzzer, `cfg(fuzzing)`, and panics on
# overflow and failed debug assertions. `--target` keeps these flags off build scripts and
# proc macros (they would not link without libFuzzer).
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks ${KORVID_FUZZ_RUSTFLAGS:-}"
bin_dir=$target_dir/$triple/release

if [ "$build" = 1 ]; then
  echo "fuzz: building ${targets[*]} into $target_dir"
  bins=()
  for t in "${targets[@]}"; do bins+=(--bin "$t"); done
  start=$(date +%s)
  # shellcheck disable=SC2086 # CARGO may be a command with arguments (flock ...).
  $cargo build --manifest-path "$fuzz_dir/Cargo.toml" --release --locked \
    --target "$triple" --target-dir "$target_dir" "${bins[@]}"
  echo "fuzz: built in $(($(date +%s) - start)) s"
fi
[ "$run" = 1 ] || exit 0

mkdir -p "$artifacts_root"
echo "fuzz: ${seconds} s per target; corpora in $corpus_root, crash inputs and logs in $artifacts_root"
summary=()
failed=()
for t in "${targets[@]}"; do
  bin=$bin_dir/$t
  if [ ! -x "$bin" ]; then
    echo "fuzz: $bin is missing; build first" >&2
    exit 2
  fi
  corpus=$corpus_root/$t
  artifacts=$artifacts_root/$t
  log=$artifacts_root/$t.log
  mkdir -p "$corpus" "$artifacts"
  flags=(-rss_limit_mb=2048 -timeout=25 -artifact_prefix="$artifacts/")
  dict=$fuzz_dir/dicts/$t.dict
  [ -f "$dict" ] || dict=$fuzz_dir/dicts/default.dict
  flags+=(-dict="$dict")

  # Inputs that once crashed must not crash again.
  regressions=()
  if [ -d "$fuzz_dir/regressions/$t" ]; then
    while IFS= read -r -d '' f; do regressions+=("$f"); done \
      < <(find "$fuzz_dir/regressions/$t" -type f -print0 | sort -z)
  fi
  if [ ${#regressions[@]} -gt 0 ]; then
    if ! "$bin" "${flags[@]}" "${regressions[@]}" >"$log" 2>&1; then
      failed+=("$t")
      summary+=("$t|regression|-|-|-|-|-")
      echo "fuzz: $t: a saved regression input crashes again (log: $log)" >&2
      grep -E -A1 'panicked at|^Running: ' "$log" | grep -v -E '^(--|stack backtrace:)$' | head -n 6 >&2 || true
      continue
    fi
  fi

  # libFuzzer only ever adds to a corpus; past a few thousand inputs, keep just those that
  # still add coverage.
  if [ "$(find "$corpus" -type f | wc -l)" -gt 4000 ]; then
    rm -rf "$corpus.merge"
    mkdir -p "$corpus.merge"
    if "$bin" -merge=1 "${flags[@]}" "$corpus.merge" "$corpus" >"$log" 2>&1; then
      rm -rf "$corpus"
      mv "$corpus.merge" "$corpus"
    else
      rm -rf "$corpus.merge"
    fi
  fi

  seeds=()
  [ -d "$fuzz_dir/seeds/$t" ] && seeds=("$fuzz_dir/seeds/$t")
  echo "fuzz: $t for ${seconds} s"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags.
  if "$bin" "$corpus" "${seeds[@]}" "${flags[@]}" -max_total_time="$seconds" \
    -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    failed+=("$t")
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  last=$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  summary+=("$t|$result|${runs:--}|${rate:--}|${cov:--}|${ft:--}|${corp:--}")
  if [ "$result" = CRASH ]; then
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "fuzz: $t CRASHED (log: $log)" >&2
    grep -E -A1 'panicked at' "$log" | grep -v -E '^(--|stack backtrace:)$' | head -n 4 >&2 || true
    grep -E 'ERROR: libFuzzer|SUMMARY' "$log" | head -n 2 >&2 || true
    if [ -n "$input" ]; then
      echo "fuzz:   input: $input" >&2
      echo "fuzz:   reproduce: $bin $input" >&2
      echo "fuzz:   keep it: mkdir -p $fuzz_dir/regressions/$t && cp $input $fuzz_dir/regressions/$t/" >&2
    fi
  fi
done

echo
printf '%-14s %-10s %12s %8s %7s %7s %12s\n' target result runs exec/s cov ft corpus
for row in "${summary[@]}"; do
  IFS='|' read -r t result runs rate cov ft corp <<<"$row"
  printf '%-14s %-10s %12s %8s %7s %7s %12s\n' "$t" "$result" "$runs" "$rate" "$cov" "$ft" "${corp:--}"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]}" >&2
  exit 1
fi

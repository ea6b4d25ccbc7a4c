#!/usr/bin/env bash
# Fuzzes every parser of client, upstream and operator bytes with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh --smoke [SECONDS]      each target: replay its corpus, then fuzz SECONDS (20)
#   scripts/fuzz.sh [TARGET...] [-- RUNS [SECONDS]]
#                                          each target (default all) until RUNS executions
#                                          (10000000) or SECONDS, then minimise its corpus into
#                                          fuzz/corpus/TARGET (cargo fuzz cmin)
# Needs a nightly toolchain and cargo-fuzz (`scripts/setup.sh --fuzz` installs cargo-fuzz when
# nightly is there); without them it says so and exits 0: the corpora are still replayed on
# stable by `cargo test` (tests/fuzz_corpora.rs). One fuzzer runs at a time, on one core.
# Targets build in $FUZZ_TARGET_DIR (default ~/.cache/trident/fuzz-target: outside the
# checkout, so a fresh clone such as CI's reuses the instrumented dependencies). Each run's final libFuzzer stats
# line is appended to fuzz/runs.log; a crash leaves its input in fuzz/artifacts/TARGET/ and
# fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

smoke=false
seconds=20
runs=10000000
max_time=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=true; [[ "${2:-}" =~ ^[0-9]+$ ]] && { seconds=$2; shift; } ;;
    --) runs=$2; shift; [ -n "${2:-}" ] && { max_time=$2; shift; } ;;
    *) targets+=("$1") ;;
  esac
  shift
done

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain, skipping (the corpora are replayed by cargo test)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (scripts/setup.sh --fuzz), skipping"
  exit 0
fi

target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/trident/fuzz-target}"
# -s none: the code is safe Rust, so AddressSanitizer finds nothing that a panic would not;
# -a keeps overflow checks and debug assertions on; 16 codegen units build Trident's
# dependency tree several times faster than the default 1, for slightly slower fuzzing.
build=(-O -a -s none --codegen-units 16 --target-dir "$target_dir")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(cargo +nightly fuzz list)

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  if $smoke; then
    limits=(-max_total_time="$seconds")
  else
    limits=(-runs="$runs" -max_total_time="$max_time")
  fi
  log="$(mktemp)"
  start=$(date +%s)
  # A fresh copy of the corpus receives the new inputs: the committed one changes only
  # through cmin below, so it stays small.
  work="$(mktemp -d)"
  cp "corpus/$target"/* "$work"/
  status=0
  cargo +nightly fuzz run "${build[@]}" "$target" "$work" -- \
    "${limits[@]}" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || status=$?
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)"
  execs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)"
  line="$(date -u +%FT%TZ) $target execs=${execs:-?} secs=$(( $(date +%s) - start )) ${done_line}"
  # Only real runs are the record; a smoke's line is shown, not kept.
  if $smoke; then echo "$line"; else echo "$line" | tee -a runs.log; fi
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/"
    exit 1
  fi
  if ! $smoke; then
    cargo +nightly fuzz cmin "${build[@]}" "$target" "$work" >/dev/null 2>&1
    rm -f "corpus/$target"/*
    cp "$work"/* "corpus/$target"/
  fi
  rm -rf "$work" "$log"
done

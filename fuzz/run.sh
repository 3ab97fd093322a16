#!/usr/bin/env bash
# Long runs of the input-parser properties (core/tests/properties.rs): the
# short-code check, target URL normalisation (a normalised target is always
# a safe `Location`), the Redis value codec, CSV rows and the config parser.
#
#   fuzz/run.sh                 # FUZZ_CASES (100000) cases per property
#   FUZZ_CASES=1000000 fuzz/run.sh
#
# proptest stands in for `cargo fuzz` (libFuzzer needs a nightly toolchain,
# which these machines cannot install). Each property gets its own seed per
# run; a failure prints the minimal input proptest shrank it to. The request
# framing guard's scanner is checked the same way in edgelink-core's unit
# tests (net::framing). Figures go into fuzz/RESULTS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${FUZZ_CASES:-100000}
cargo test --release -p edgelink-core --test properties --no-run --quiet 2>/dev/null
for property in a_code_is_accepted_only_when_it_is_safe a_normalised_target_is_a_safe_location \
  the_redis_codec_round_trips_and_never_panics_on_garbage csv_rows_parse_or_say_why \
  csv_rows_built_from_parts_parse_exactly the_config_parser_never_panics; do
  start=$(date +%s.%N)
  if PROPTEST_CASES=$CASES cargo test --release -q -p edgelink-core --test properties -- --exact "$property" \
      > "/tmp/fuzz-$property.txt" 2>&1; then verdict=ok; else verdict=FAILED; fi
  secs=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  echo "$property: $CASES cases, $verdict, ${secs} s"
  [ "$verdict" = ok ] || sed -n '/minimal failing input/,+3p' "/tmp/fuzz-$property.txt"
done
echo "$(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1); commit $(git rev-parse --short HEAD)"

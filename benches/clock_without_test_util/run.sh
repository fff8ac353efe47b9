#!/bin/sh
# Instructions per read ((I(2N) - I(N)) / N under callgrind) of std's and tokio's Instant::now,
# tokio built without and with its test-util feature.
set -eu
cd "$(dirname "$0")"
for variant in plain test-util; do
  if [ "$variant" = plain ]; then feat=""; else feat="--features test-util"; fi
  CARGO_TARGET_DIR="target/$variant" cargo build --release -q $feat
  for f in std tokio; do
    for n in 100000 200000; do
      valgrind --tool=callgrind --collect-atstart=no "--toggle-collect=*measured_$f*" \
        --callgrind-out-file="target/cg.$variant.$f.$n" "target/$variant/release/clock-without-test-util" $n \
        >/dev/null 2>&1
    done
    a=$(grep -E '^(summary|totals):' "target/cg.$variant.$f.100000" | head -1 | awk '{print $2}')
    b=$(grep -E '^(summary|totals):' "target/cg.$variant.$f.200000" | head -1 | awk '{print $2}')
    echo "tokio $variant, $f Instant::now: $(( (b - a) / 100000 )) instructions per read"
  done
done

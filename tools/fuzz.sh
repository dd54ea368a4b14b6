#!/bin/sh
# fuzz.sh — `make fuzz`: the timer wheel's fuzzer, bounded in time.
# With clang's libFuzzer (Debian: clang) it runs coverage-guided for
# FUZZ_SECONDS (default 60); without it, the standalone build runs random
# inputs for the same time. Both check every operation against a model.
SECONDS_=${FUZZ_SECONDS:-60}
mkdir -p build/fuzz-corpus
if command -v clang >/dev/null 2>&1 &&
   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
         -o build/fuzz_tw csrc/core/fuzz_tw.c csrc/core/tw.c 2>/dev/null; then
  echo "fuzz: libFuzzer, $SECONDS_ s"
  exec ./build/fuzz_tw -max_total_time="$SECONDS_" -print_final_stats=1 build/fuzz-corpus
fi
echo "fuzz: clang's libFuzzer not available; standalone random inputs, $SECONDS_ s"
${CC:-cc} -std=c99 -Wall -Wextra -pedantic -O1 -g -fsanitize=address,undefined \
  -DTW_FUZZ_STANDALONE -o build/fuzz_tw_sa csrc/core/fuzz_tw.c csrc/core/tw.c || exit 1
exec ./build/fuzz_tw_sa "$SECONDS_"

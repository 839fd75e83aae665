#!/usr/bin/env bash
# Build the libFuzzer targets on the stable toolchain and run them.
#
# cargo-fuzz needs nightly only for its sanitizers (-Zsanitizer); the coverage instrumentation libFuzzer needs
# is made by stable -C flags, the same ones cargo-fuzz passes. adclick-core has no unsafe code on these paths,
# so AddressSanitizer would add little: build like `cargo fuzz build --sanitizer none`, with any toolchain.
#
#   fuzz/run.sh [--runs N] [--seconds S] [--jobs J] [target...]   (default: every target, 1,000,000 runs each)
#
# Each target first replays its whole corpus (fuzz/corpus/<target>: the committed seed-* files plus whatever
# earlier runs found), then mutates from it. A crash leaves its input in fuzz/artifacts/<target>/ and exits 1;
# turn it into a regression test in rust/core (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")"

runs=1000000
seconds=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --seconds) seconds="$2"; runs=-1; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(clickid link_config template)

triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
cargo build --release --locked --quiet --target "$triple" --bins

status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    args=(-seed=1 -max_len=4096 -print_final_stats=1 "-artifact_prefix=artifacts/$target/")
    [ -f "dicts/$target.dict" ] && args+=("-dict=dicts/$target.dict")
    if [ "$runs" -ge 0 ]; then args+=("-runs=$runs"); else args+=("-max_total_time=$seconds"); fi
    echo "== $target: ${args[*]}"
    if ! "target/$triple/release/$target" "${args[@]}" "corpus/$target"; then
        echo "!! $target failed: see fuzz/artifacts/$target/" >&2
        status=1
    fi
done
exit $status

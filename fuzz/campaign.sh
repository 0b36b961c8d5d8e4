#!/usr/bin/env bash
# Run an AFL++ campaign on one harness, then minimise what it found.
#
#   fuzz/campaign.sh HARNESS SECONDS [JOBS]
#
# HARNESS is header, check or repair (fuzz/fuzz_HARNESS.c). JOBS instances
# (default: the number of cores) share one output folder: the main one runs
# the plain instrumented build, the first secondary the ASan + UBSan build,
# any others the plain build. Seeds are every file of corpus/ (only those
# whose name matches $QC_FUZZ_SEEDS, a find -name pattern, when set: '*.qed'
# for a QED campaign). The work
# folder is $QC_FUZZ_WORK (default: build-fuzz/ in the repository); running
# again resumes the campaign.
#
# Afterwards every crash and hang is minimised with afl-tmin into
# $QC_FUZZ_WORK/findings/HARNESS/, the queue is reduced with afl-cmin, the
# reduced queue is replayed through the replay driver built with gcc's
# ASan + UBSan (catching what the plain instances could not see), and the
# totals (execs, CPU time, crashes, hangs) are printed. Last, the
# differential oracle (tests/oracle/oracle.py, docs/oracle.md) compares
# qcheck with qemu-img on every file of the reduced queue and checks its
# implications (QC_ORACLE=0 skips this; its report is in
# $QC_FUZZ_WORK/oracle-HARNESS.txt). To keep a finding, copy its minimised
# file to corpus/regressions/ once it is fixed.
set -euo pipefail

harness=${1:?usage: fuzz/campaign.sh header|check|repair SECONDS [JOBS]}
seconds=${2:?usage: fuzz/campaign.sh header|check|repair SECONDS [JOBS]}
jobs=${3:-$(nproc)}
case "$harness" in header | check | repair) ;; *) echo "unknown harness: $harness" >&2; exit 2 ;; esac

src=$(cd "$(dirname "$0")/.." && pwd)
work=${QC_FUZZ_WORK:-$src/build-fuzz}
mkdir -p "$work"
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1

build() { # build DIR [cmake arguments...]
  local dir=$1
  shift
  cmake -S "$src" -B "$dir" -DQC_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)" --target "fuzz_$harness" >/dev/null
}
build "$work/afl" -DQC_FUZZ=ON
AFL_USE_ASAN=1 AFL_USE_UBSAN=1 build "$work/afl-asan" -DQC_FUZZ=ON
build "$work/replay" -DCMAKE_C_COMPILER=gcc -DQC_SANITIZE=ON
cmake --build "$work/replay" -j"$(nproc)" --target qcheck >/dev/null

seeds=$work/seeds
rm -rf "$seeds" && mkdir -p "$seeds"
find "$src/corpus" -type f ! -name '*.md' -name "${QC_FUZZ_SEEDS:-*}" -exec cp {} "$seeds/" \;
out=$work/out-$harness
mkdir -p "$out"
input=(-i "$seeds")
[ -d "$out/main/queue" ] && input=(-i -) # resume

fuzz() { # fuzz NAME ROLE BUILD
  afl-fuzz "${input[@]}" -o "$out" "$2" "$1" -x "$src/fuzz/qcow2.dict" -m none -t 5000+ \
    -V "$seconds" -- "$work/$3/fuzz/fuzz_$harness" >"$out/$1.log" 2>&1
}
echo "fuzzing $harness for $seconds s with $jobs instance(s); output in $out"
pids=()
fuzz main -M afl & pids+=($!)
for ((i = 1; i < jobs; i++)); do
  if [ "$i" = 1 ]; then fuzz asan -S afl-asan & else fuzz "plain$i" -S afl & fi
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" = 0 ] || echo "an afl-fuzz instance failed: see $out/*.log" >&2

# Totals over the instances, from AFL++'s own statistics.
awk -F' *: *' '
  $1 == "execs_done" { execs += $2 } $1 == "run_time" { cpu += $2 }
  $1 == "saved_crashes" { crashes += $2 } $1 == "saved_hangs" { hangs += $2 }
  $1 == "corpus_count" && FILENAME ~ /main/ { queue = $2 }
  END { printf "execs %d, CPU hours %.2f, crashes %d, hangs %d, queue %d\n",
        execs, cpu / 3600, crashes, hangs, queue }' "$out"/*/fuzzer_stats

findings=$work/findings/$harness
mkdir -p "$findings"
for f in "$out"/*/crashes/id:* "$out"/*/hangs/id:*; do
  [ -e "$f" ] || continue
  kind=$(basename "$(dirname "$f")")
  name="$kind-$(basename "$(dirname "$(dirname "$f")")")-$(basename "$f" | cut -c4-9)"
  [ -e "$findings/$name" ] && continue
  # (in the work folder, where afl-tmin leaves its temporary file)
  (cd "$work" && afl-tmin -i "$f" -o "$findings/$name" -m none -t 10000 -- \
    "$work/afl/fuzz/fuzz_$harness" >/dev/null 2>&1) || cp "$f" "$findings/$name"
  echo "minimised $f -> $findings/$name"
done

reduced=$work/reduced-$harness
rm -rf "$reduced"
afl-cmin -i "$out/main/queue" -o "$reduced" -m none -t 10000 -- "$work/afl/fuzz/fuzz_$harness" \
  >/dev/null 2>&1 || cp -r "$out/main/queue" "$reduced"
echo "replaying $(ls "$reduced" | wc -l) reduced queue entries under ASan + UBSan"
"$work/replay/fuzz/fuzz_$harness" --max-seconds=20 "$reduced" 2>/dev/null | tail -1
echo "findings: $(ls "$findings" | wc -l) minimised in $findings"

# The queue through the differential oracle: every input qemu-img and
# qcheck judge alike (or differ on only as docs/qemu-img-differences.md
# says), and qcheck's verdicts hold (QEMU can use what it calls usable,
# repairs keep guest data). Disagreements are listed; they do not fail the
# campaign, which is about crashes.
if [ "${QC_ORACLE:-1}" != 0 ]; then
  echo "differential oracle on the reduced queue (report: $work/oracle-$harness.txt)"
  python3 "$src/tests/oracle/oracle.py" --qcheck "$work/replay/qcheck" --images "$reduced" \
    --work "$work/oracle-work-$harness" >"$work/oracle-$harness.txt" 2>&1 || true
  tail -1 "$work/oracle-$harness.txt"
fi

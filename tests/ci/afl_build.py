#!/usr/bin/env python3
"""The AFL++ build of the fuzz harnesses still configures and compiles.

Configures a fresh tree in WORK with -DQC_FUZZ=ON (the top CMakeLists then
picks afl-clang-fast or afl-cc before project()) and warnings as errors,
builds the three harnesses only, and checks that each is AFL++'s
persistent-mode program (its signature string), not a replay driver.
Exits 77 (a skip for CTest) when afl-clang-fast is not installed.

usage: afl_build.py CMAKE SOURCE_DIR WORK
"""
import os
import shutil
import subprocess
import sys

SKIP = 77
HARNESSES = ["fuzz_header", "fuzz_check", "fuzz_repair"]
PERSISTENT_SIGNATURE = b"##SIG_AFL_PERSISTENT##"


def main():
    cmake, source, work = sys.argv[1:]
    if not shutil.which("afl-clang-fast"):
        print("SKIP: afl-clang-fast is not installed (.ci/install-deps installs afl++)")
        return SKIP
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ, AFL_QUIET="1")
    env.pop("CC", None)  # QC_FUZZ must choose the compiler itself
    subprocess.run([cmake, "-S", source, "-B", work, "-DQC_FUZZ=ON", "-DQC_BUILD_TESTS=OFF",
                    "-DQC_WERROR=ON"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([cmake, "--build", work, "-j2", "--target", *HARNESSES],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    failures = 0
    for harness in HARNESSES:
        with open(os.path.join(work, "fuzz", harness), "rb") as f:
            persistent = PERSISTENT_SIGNATURE in f.read()
        print(("ok:   " if persistent else "FAIL: ") + f"{harness} is an AFL++ persistent-mode build")
        failures += not persistent
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

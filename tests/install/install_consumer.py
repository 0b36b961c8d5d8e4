#!/usr/bin/env python3
"""cmake --install into a fresh prefix, then build a program against it.

Installs the build tree into WORK/prefix, checks that every installed file
is where GNUInstallDirs puts it, and compiles tests/install/consumer.c with
nothing but `pkg-config --cflags --libs qcheck` (PKG_CONFIG_PATH into the
prefix): once against libqcheck.so (run with LD_LIBRARY_PATH), once
against libqcheck.a (the static flags of qcheck.pc, so Requires.private
and Libs.private are exercised; it must not need libqcheck.so). Both must
report the exit status the installed qcheck gives for the same file: a
clean image, a corrupt one, the demo (a leak) and a file that is not qcow2.

usage: install_consumer.py CMAKE BUILD_DIR WORK CC CONSUMER_C CORPUS VERSION
"""
import glob
import json
import os
import shutil
import subprocess
import sys

CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def needed(binary):
    """The shared libraries the binary names (DT_NEEDED)."""
    out = run(["readelf", "-d", binary])
    return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


class Checker:
    def __init__(self):
        self.failures = []

    def expect(self, ok, what):
        print(("ok:   " if ok else "FAIL: ") + what)
        if not ok:
            self.failures.append(what)


def main():
    cmake, build, work, cc, consumer_c, corpus, version = sys.argv[1:]
    prefix = os.path.join(work, "prefix")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    run([cmake, "--install", build, "--prefix", prefix])
    t = Checker()

    pcs = glob.glob(os.path.join(prefix, "**", "pkgconfig", "qcheck.pc"), recursive=True)
    t.expect(len(pcs) == 1, f"one qcheck.pc installed (found {pcs})")
    if not pcs:
        return 1
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]))
    pkg = lambda *args: run(["pkg-config", *args, "qcheck"], env=env).split()
    libdir = os.path.realpath(pkg("--variable=libdir")[0])
    includedir = os.path.realpath(pkg("--variable=includedir")[0])
    t.expect(pkg("--modversion") == [version], f"qcheck.pc says version {version}")

    for path in [os.path.join(prefix, "bin", "qcheck"),
                 os.path.join(libdir, "libqcheck.a"),
                 os.path.join(libdir, "libqcheck.so"),
                 os.path.join(libdir, "libqcheck.so." + version.split(".")[0]),
                 os.path.join(libdir, "libqcheck.so." + version),
                 os.path.join(includedir, "qcheck.h"),
                 os.path.join(includedir, "qcheck_problems.def"),
                 os.path.join(includedir, "qcheck_version.h"),
                 os.path.join(prefix, "share", "man", "man1", "qcheck.1"),
                 os.path.join(prefix, "share", "doc", "qcheck", "problems.md")]:
        t.expect(os.path.exists(path), f"installed {os.path.relpath(path, prefix)}")

    shared = os.path.join(work, "consumer_shared")
    run([cc, *CFLAGS, "-o", shared, consumer_c, *pkg("--cflags", "--libs")], env=env)
    t.expect(any(n.startswith("libqcheck.so") for n in needed(shared)),
             "the shared build needs libqcheck.so")

    static = os.path.join(work, "consumer_static")
    static_flags = ["-l:libqcheck.a" if f == "-lqcheck" else f
                    for f in pkg("--cflags", "--static", "--libs")]
    run([cc, *CFLAGS, "-o", static, consumer_c, *static_flags], env=env)
    t.expect(not any(n.startswith("libqcheck") for n in needed(static)),
             "the static build does not need libqcheck.so")

    qcheck = os.path.join(prefix, "bin", "qcheck")
    cases = [(os.path.join(corpus, "seeds", "v3.qcow2"), 0),
             (os.path.join(corpus, "seeds", "zero-refcount.qcow2"), 2),
             (os.path.join(corpus, "demo.qcow2"), 3),
             (consumer_c, 63)]
    shared_env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    for image, status in cases:
        name = os.path.relpath(image, os.path.dirname(corpus))
        got = subprocess.run([qcheck, "-q", image], capture_output=True).returncode
        t.expect(got == status, f"installed qcheck exits {status} on {name} (got {got})")
        # The leak count read through the result's accessor is the command's.
        out = subprocess.run([qcheck, "--output=json", image], capture_output=True, text=True).stdout
        leaks = json.loads(out).get("leaks", 0) if status != 63 else 0
        for program, program_env in [(shared, shared_env), (static, None)]:
            done = subprocess.run([program, image], capture_output=True, text=True, env=program_env)
            want = f"qcheck {version}: exit status {status}, {leaks} leaked clusters\n"
            t.expect(done.returncode == 0 and done.stdout == want,
                     f"{os.path.basename(program)} {name} prints {want.strip()!r} "
                     f"(got {done.returncode}, {done.stdout.strip()!r} {done.stderr.strip()!r})")

    return 1 if t.failures else 0


if __name__ == "__main__":
    sys.exit(main())

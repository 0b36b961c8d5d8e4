#!/usr/bin/env python3
"""cpack -G DEB builds the package, and it holds what a user needs.

Runs CPack on the build tree's CPackConfig.cmake into WORK (its own
staging folder, so the build tree is only read), then asks dpkg-deb for
the control fields (package name, dependencies found by dpkg-shlibdeps)
and the file list: the command, both libraries with the soname link, the
public headers and qcheck.pc.

usage: deb_contents.py CPACK BUILD_DIR WORK VERSION
"""
import glob
import os
import shutil
import subprocess
import sys


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    cpack, build, work, version = sys.argv[1:]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    run([cpack, "-G", "DEB", "--config", os.path.join(build, "CPackConfig.cmake"), "-B", work])
    debs = glob.glob(os.path.join(work, "*.deb"))
    if len(debs) != 1:
        print(f"FAIL: cpack made {debs}, not one .deb")
        return 1
    deb = debs[0]
    fields = dict(line.split(": ", 1) for line in run(["dpkg-deb", "-f", deb]).splitlines()
                  if ": " in line and not line.startswith(" "))
    files = set()
    for line in run(["dpkg-deb", "-c", deb]).splitlines():
        path = line.split(None, 5)[5].split(" -> ")[0]
        files.add(path.lstrip("."))

    expected_fields = {"Package": "qcheck", "Version": version}
    expected_files = ["/usr/bin/qcheck", "/usr/lib/libqcheck.a", "/usr/lib/libqcheck.so",
                      "/usr/lib/libqcheck.so." + version.split(".")[0],
                      "/usr/lib/libqcheck.so." + version, "/usr/include/qcheck.h",
                      "/usr/include/qcheck_version.h", "/usr/include/qcheck_problems.def",
                      "/usr/lib/pkgconfig/qcheck.pc", "/usr/share/man/man1/qcheck.1"]
    failures = []
    for key, value in expected_fields.items():
        if fields.get(key) != value:
            failures.append(f"{key} is {fields.get(key)!r}, not {value!r}")
    for key in ["Maintainer", "Description"]:
        if not fields.get(key):
            failures.append(f"no {key} field")
    if "libxxhash0" not in fields.get("Depends", ""):
        failures.append(f"Depends ({fields.get('Depends')!r}) does not name libxxhash0")
    for path in expected_files:
        if path not in files:
            failures.append(f"{os.path.basename(deb)} lacks {path}")
    for failure in failures:
        print("FAIL:", failure)
    print(f"{os.path.basename(deb)}: {len(files)} entries, Depends: {fields.get('Depends')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Every CTest entry has a label (ctest -L selects by them; CI reports them).

usage: labels.py CTEST BUILD_DIR
"""
import json
import subprocess
import sys


def main():
    ctest, build = sys.argv[1:]
    out = subprocess.run([ctest, "--show-only=json-v1"], cwd=build, check=True,
                         capture_output=True, text=True).stdout
    tests = json.loads(out)["tests"]
    unlabelled = [t["name"] for t in tests
                  if not any(p["name"] == "LABELS" and p["value"] for p in t.get("properties", []))]
    for name in unlabelled:
        print(f"FAIL: test {name} has no LABELS property")
    print(f"{len(tests)} tests, {len(tests) - len(unlabelled)} labelled")
    return 1 if unlabelled or not tests else 0


if __name__ == "__main__":
    sys.exit(main())

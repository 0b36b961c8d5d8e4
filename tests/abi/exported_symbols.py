#!/usr/bin/env python3
"""The library's symbols are its public interface and nothing else.

libqcheck.so exports (nm -D) only names that start with qc_ and that the
public header declares; libqcheck.a defines no external name (nm -g)
without the qc_ prefix, so a program linking it statically cannot collide
with it. The header is read after the preprocessor, so declarations made
by macros count.

usage: exported_symbols.py NM CC HEADER INCLUDE_DIR... --shared LIB.so --static LIB.a
"""
import argparse
import re
import subprocess
import sys

PREFIX = "qc_"


def defined_symbols(nm, args, library):
    """Names nm lists as defined with `args`, one per symbol line."""
    out = subprocess.run([nm, *args, "--defined-only", library], check=True,
                         capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        # "ADDRESS TYPE NAME"; archive member headers ("x.o:") and blank
        # lines have another shape.
        if len(fields) == 3:
            name = fields[2].split("@")[0]
            # AddressSanitizer's companion of an instrumented global (the
            # global itself is checked under its own name).
            if name.startswith("__odr_asan."):
                continue
            names.add(name)
    return names


def declared_names(cc, header, include_dirs):
    """Functions (but static inline ones) and extern objects the public
    header declares."""
    cmd = [cc, "-E", "-P", *(f"-I{d}" for d in include_dirs), header]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    functions = set(re.findall(r"\b(" + PREFIX + r"\w+)\s*\(", text))
    inline = set(re.findall(r"\bstatic\s+inline\b[^;{]*?\b(" + PREFIX + r"\w+)\s*\(", text))
    objects = set(re.findall(r"\bextern\b[^;(]*?\b(" + PREFIX + r"\w+)\s*[\[;]", text))
    return (functions - inline) | objects


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("nm")
    parser.add_argument("cc")
    parser.add_argument("header")
    parser.add_argument("include_dirs", nargs="+")
    parser.add_argument("--shared", required=True)
    parser.add_argument("--static", required=True)
    args = parser.parse_args()

    declared = declared_names(args.cc, args.header, args.include_dirs)
    exported = defined_symbols(args.nm, ["-D"], args.shared)
    static_externs = defined_symbols(args.nm, ["-g"], args.static)

    failures = []
    for name in sorted(exported):
        if not name.startswith(PREFIX):
            failures.append(f"{args.shared} exports {name}, which lacks the {PREFIX} prefix")
        elif name not in declared:
            failures.append(f"{args.shared} exports {name}, which {args.header} does not declare")
    for name in sorted(static_externs):
        if not name.startswith(PREFIX):
            failures.append(f"{args.static} defines the external symbol {name}, "
                            f"which lacks the {PREFIX} prefix (make it static?)")
    if not exported:
        failures.append(f"{args.shared} exports nothing: is the header's visibility pragma gone?")
    missing = sorted(n for n in declared if n not in exported)
    if missing:
        failures.append(f"{args.header} declares what {args.shared} does not export: "
                        + ", ".join(missing))

    for failure in failures:
        print("FAIL:", failure)
    print(f"{len(exported)} symbols exported by {args.shared}, "
          f"{len(static_externs)} external symbols defined by {args.static}, "
          f"{len(declared)} names declared by {args.header}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

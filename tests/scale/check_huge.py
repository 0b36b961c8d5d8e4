#!/usr/bin/env python3
"""Scale: an image of more than 2^31 host clusters, checked and repaired.

Usage: check_huge.py QCHECK QCHECK_PLAIN WORK

The image (tests/bench/huge_image.py) is a sparse file of just over 1 TiB
with 512-byte clusters, 2^31 + 26 host clusters, metadata and data both near
the start and past host cluster 2^31. QEMU refuses to check it ("File too
large", more than INT_MAX clusters). This test asserts that:
- qcheck finds it clean (exit 0, no finding) and reports the image end
  offset at the end of the file;
- a refcount cleared past cluster 2^31 is found at the right host offset
  (no truncation to 32 bits anywhere), and -r all repairs it in place;
- memory follows the clusters in use, not the file's length: the peak RSS
  of the check and of the repair (measured on QCHECK_PLAIN, the build
  without sanitizers) stays under 32 MiB, where a dense map of 2^31
  clusters would need gigabytes.
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import huge_image  # noqa: E402

RSS_LIMIT_KIB = 32 * 1024
FAR = 1 << 31


def run(argv):
    """Exit status, stdout and stderr of one process."""
    p = subprocess.run(argv, capture_output=True, timeout=300)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def peak_rss(argv):
    """Exit status and peak RSS (KiB) of one process, output discarded."""
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execv(argv[0], argv)
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss


def main():
    qcheck, plain, work = sys.argv[1:4]
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    image = os.path.join(work, "huge.qcow2")
    huge_image.build(image)
    size = os.path.getsize(image)
    clusters = size // 512
    expect(clusters > FAR, "the image has only %d host clusters" % clusters)

    status, out, err = run([qcheck, "--output=json", image])
    result = json.loads(out)
    expect(status == 0, "clean image: exit %d, %s" % (status, err.strip()))
    expect(result["problems"] == [], "clean image: findings %s" % result["problems"][:3])
    expect(result["image-end-offset"] == size,
           "image end offset %d, file size %d" % (result["image-end-offset"], size))
    expect(result["allocated-clusters"] == 40, "allocated %d, 40 mapped" % result["allocated-clusters"])

    if shutil.which("qemu-img"):
        status, _, err = run(["qemu-img", "check", image])
        expect(status == 1 and "File too large" in err,
               "qemu-img was expected to refuse the image: exit %d, %s" % (status, err.strip()))

    status, rss = peak_rss([plain, image])
    expect(status == 0 and rss < RSS_LIMIT_KIB, "check: exit %d, peak RSS %d KiB" % (status, rss))

    # Clear the refcount of the first far data cluster: 1-bit refcounts, the
    # far refcount block is host cluster 2^31 and covers 2^31 on.
    target = FAR + 2
    with open(image, "r+b") as f:
        at = FAR * 512 + (target - FAR) // 8
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte & ~(1 << ((target - FAR) % 8))]))
    status, out, _ = run([qcheck, "--output=json", image])
    problems = json.loads(out)["problems"]
    expect(status == 2, "damaged image: exit %d" % status)
    expect([(p["id"], p["offset"]) for p in problems] == [("refcountZeroInUse", target * 512)],
           "damaged image: findings %s" % problems)

    # A dry run leaves the image as it is: exit 2.
    status, rss = peak_rss([plain, "-r", "all", "-n", image])
    expect(status == 2 and rss < RSS_LIMIT_KIB,
           "dry-run repair: exit %d, peak RSS %d KiB" % (status, rss))
    status, out, err = run([qcheck, "-r", "all", image])
    expect(status == 0, "repair: exit %d, %s" % (status, err.strip()))
    expect(os.path.getsize(image) == size, "the repair changed the file size")
    status, out, _ = run([qcheck, "--output=json", image])
    expect(status == 0 and json.loads(out)["problems"] == [],
           "after the repair: exit %d, %s" % (status, out[:200]))

    shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print("FAIL:", f)
    print("scale: %d checks failed" % len(failures) if failures else "scale: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

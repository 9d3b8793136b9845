"""Exit 1 unless this environment holds exactly the packages of a lock file, at its versions.

    python scripts/check_lock.py requirements/lock.txt

Ignored: the project itself and pip's own tooling (pip, setuptools, wheel). A local version label
(torch 2.13.0+cpu) matches the lock's plain version. Standard library only.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

IGNORED = {"vidtrt", "pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    for raw in open(path, encoding="utf-8"):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: {line!r} is not a 'name==version' pin")
        pins[canonical(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/check_lock.py LOCK_FILE", file=sys.stderr)
        return 2
    want = read_lock(argv[0])
    have = {k: v for k, v in installed().items() if k not in IGNORED}
    problems = [f"{n}: installed {have[n]}, locked {v}" for n, v in sorted(want.items())
                if n in have and have[n].split("+")[0] != v]
    problems += [f"{n}: locked {v}, not installed" for n, v in sorted(want.items()) if n not in have]
    problems += [f"{n}: installed {v}, not in the lock" for n, v in sorted(have.items()) if n not in want]
    for p in problems:
        print(f"check_lock: {p}", file=sys.stderr)
    if problems:
        print(f"check_lock: this environment differs from {argv[0]} ({len(problems)} packages)", file=sys.stderr)
        return 1
    print(f"check_lock: {len(want)} packages exactly as in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

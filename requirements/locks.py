"""The lock files of this folder: the GPU lock merged over the CPU lock, and wheels or an installed
environment checked against a lock.

    python requirements/locks.py constraints GPU_LOCK BASE_LOCK  # the merged pins, on stdout
    python requirements/locks.py wheels LOCK WHEEL...            # each wheel is the lock's version
    python requirements/locks.py installed LOCK [NAME...]        # installed as the lock says (all: no NAME)

docker/Dockerfile runs `constraints` before anything but pip is in its environment (so that part needs
the standard library only) and `installed` after the install; bench/gpu_serving.sh runs `wheels` and
`installed` on the GPU machine. A mismatch exits 1 with one line per package.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")


def canonical_name(name: str) -> str:
    """The name as pip compares names (PEP 503): case and runs of '-', '_', '.' do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """The exact pins of a lock file, by canonical name. Every line that is not blank or a comment must
    be NAME==VERSION, each name once."""
    pins: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = PIN.match(text)
        if match is None:
            raise ValueError(f"{path}:{number}: {text!r} is not an exact pin (NAME==VERSION)")
        name = canonical_name(match["name"])
        if name in pins:
            raise ValueError(f"{path}:{number}: {match['name']} is pinned twice")
        pins[name] = match["version"]
    return pins


def merged_constraints(gpu_lock: Path, base_lock: Path) -> list[str]:
    """Every pin of the GPU lock, then the base lock's pins of the packages the GPU lock does not name."""
    gpu, base = read_lock(gpu_lock), read_lock(base_lock)
    return [f"{name}=={version}" for name, version in gpu.items()] + [
        f"{name}=={version}" for name, version in base.items() if name not in gpu
    ]


def same_version(found: str, locked: str) -> bool:
    # packaging is imported here, not at the top: `constraints` runs before it is installed.
    from packaging.version import Version

    return Version(found) == Version(locked)


def wheel_mismatches(lock: Path, wheels: list[str]) -> list[str]:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    pins = read_lock(lock)
    problems = []
    for wheel in wheels:
        if not Path(wheel).is_file():
            problems.append(f"{wheel}: no such wheel")
            continue
        try:
            name, version, _, _ = parse_wheel_filename(Path(wheel).name)
        except InvalidWheelFilename as error:
            problems.append(f"{wheel}: {error}")
            continue
        locked = pins.get(canonical_name(name))
        if locked is None:
            problems.append(f"{Path(wheel).name}: {name} is not in {lock}")
        elif not same_version(str(version), locked):
            problems.append(f"{Path(wheel).name}: {name} {version}, but {lock} pins {locked}")
    return problems


def installed_mismatches(lock: Path, names: list[str]) -> list[str]:
    pins = read_lock(lock)
    problems = []
    for name in [canonical_name(n) for n in names] or list(pins):
        locked = pins.get(name)
        if locked is None:
            problems.append(f"{name} is not in {lock}")
            continue
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed ({lock} pins {locked})")
            continue
        if not same_version(found, locked):
            problems.append(f"{name} {found} is installed, but {lock} pins {locked}")
    return problems


def main(argv: list[str]) -> int:
    usage = __doc__.split("\n\n")[1]
    if len(argv) < 2 or argv[0] not in ("constraints", "wheels", "installed"):
        print(f"usage:\n{usage}", file=sys.stderr)
        return 2
    command, lock, rest = argv[0], Path(argv[1]), argv[2:]
    if command == "constraints":
        if len(rest) != 1:
            print(f"usage:\n{usage}", file=sys.stderr)
            return 2
        print("\n".join(merged_constraints(lock, Path(rest[0]))))
        return 0
    problems = wheel_mismatches(lock, rest) if command == "wheels" else installed_mismatches(lock, rest)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Take each detector part off the detector list in turn and run the fast tests: every part must make one fail.

    .venv/bin/python tests/part_removal.py                  # every part; each run stops at its first failure
    .venv/bin/python tests/part_removal.py --count          # every fast test for every part, failures counted
    .venv/bin/python tests/part_removal.py rebind_device    # only the parts named

A part is removed by name from ``DETECTOR_PARTS`` (``smsstream.detection.engine``)
through the ``SMSSTREAM_TEST_WITHOUT_PART`` variable that ``tests/conftest.py``
honours; tests that run only some parts pick them from that list
(``traffic.detector_parts``). A part whose removal no test notices is a part
the tests do not check: the script says so and exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: The detectors' own tests first, so a run stopped at its first failure is short.
FIRST = ["test_non_borrower.py", "test_shared_list.py", "test_delivery.py", "test_template_hijack.py", "test_rebind.py",
         "test_alerts.py", "test_state_roundtrip.py", "test_replay.py", "test_worker_flow.py"]


def part_names() -> list[str]:
    sys.path.insert(0, str(REPO / "src"))
    from smsstream.detection.engine import DETECTOR_PARTS

    return [part.name for part in DETECTOR_PARTS]


def run_without(name: str, count: bool) -> tuple[list[str], float]:
    """The tests that failed with part ``name`` removed, and the seconds the run took."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not broker and not slow",
            "--tb=no", "-rf", *([] if count else ["-x"]), *(str(TESTS / f) for f in FIRST), str(TESTS)]
    env = {**os.environ, "SMSSTREAM_TEST_WITHOUT_PART": name}
    started = time.monotonic()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
    if done.returncode not in (0, 1) or (done.returncode == 1 and not failed):
        sys.exit(f"pytest could not run without {name} (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return failed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="part names (default: every part of DETECTOR_PARTS)")
    parser.add_argument("--count", action="store_true", help="run every fast test for each part and count failures")
    args = parser.parse_args()
    names = part_names()
    unknown = sorted(set(args.parts) - set(names))
    if unknown:
        parser.error(f"no such part: {', '.join(unknown)}; the parts are {', '.join(names)}")
    unnoticed = []
    for name in args.parts or names:
        failed, seconds = run_without(name, args.count)
        if failed:
            what = f"{len(failed)} test(s) fail" if args.count else "a test fails"
            print(f"without {name:<24} {what}, e.g. {failed[0].split('::')[-1]}  ({seconds:.0f} s)", flush=True)
        else:
            unnoticed.append(name)
            print(f"without {name:<24} NO TEST FAILS  ({seconds:.0f} s)", flush=True)
    if unnoticed:
        print(f"no test notices the removal of: {', '.join(unnoticed)}")
        return 1
    print(f"every one of the {len(args.parts or names)} parts is needed by at least one test")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The schemathesis run of tests/test_fuzz.py at a larger size, on demand: more examples
per operation and more stateful scenarios than CI's (50 and 100), the same checks (no
5xx, every answer as the OpenAPI document says, none slower than 5 s).

    python bench/fuzz.py                      # 200 examples per operation and mode
    python bench/fuzz.py --examples 1000 --scenarios 2000

It runs the test with pytest (ATHENAQ_FUZZ_EXAMPLES, ATHENAQ_FUZZ_SCENARIOS), which
prints the count of requests, their spread over operations and statuses, and the slowest
answer. Needs MariaDB (ATHENAQ_TEST_DB_URL, root@127.0.0.1:3306 by default) and
`pip install -e . --group test`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--scenarios", type=int, default=None, help="default: 2 x examples")
    args = parser.parse_args()
    os.environ["ATHENAQ_FUZZ_EXAMPLES"] = str(args.examples)
    os.environ["ATHENAQ_FUZZ_SCENARIOS"] = str(args.scenarios or 2 * args.examples)
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    os.chdir(ROOT)
    # Its own time limit: the test's default of 2 minutes is CI's.
    return pytest.main(
        ["tests/test_fuzz.py", "-m", "fuzz", "-q", "-s", "-p", "no:logging", "--timeout=0"]
    )


if __name__ == "__main__":
    sys.exit(main())

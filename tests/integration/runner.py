"""Runs the integration suite (unittest), one line per test, the server's
stderr tail under each failure, and a machine-readable summary last:

    INTEGRATION: passed=N failed=M skipped=S

Usage: /usr/bin/python3 tests/integration/runner.py [-k SUBSTRING]...
"""

import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class Result(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.passed = 0
        self.t0 = {}
        self.failed_ids = set()  # tests with a failure, counted once
        self.t0_printed = set()

    def startTest(self, test):
        super().startTest(test)
        self.t0[test.id()] = time.time()
        sys.stdout.write("  %s ... " % _short(test))
        sys.stdout.flush()

    def _dt(self, test):
        return "%.1fs" % (time.time() - self.t0.get(test.id(), time.time()))

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        print("ok (%s)" % self._dt(test), flush=True)

    def _report(self, what, test, err):
        self.failed_ids.add(test.id())
        if test.id() in self.t0_printed:
            pass
        elif test.id() in self.t0:
            self.t0_printed.add(test.id())
            print("%s (%s)" % (what, self._dt(test)))
        else:
            print("  %s: %s" % (what, test))
        print("    " + self._exc_info_to_string(err, test).rstrip().replace("\n", "\n    "))
        srv = getattr(type(test), "srv", None) if not isinstance(
            test, unittest.suite._ErrorHolder) else None
        if srv is not None:
            print("  --- sbxd stderr (tail) ---")
            print("\n".join("  | " + l for l in srv.log_tail(15).splitlines()))
        sys.stdout.flush()

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._report("FAIL", test, err)

    def addError(self, test, err):
        super().addError(test, err)
        self._report("ERROR", test, err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        print("skipped: %s" % reason, flush=True)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.failed_ids.add(test.id())
            if test.id() not in self.t0_printed:
                self.t0_printed.add(test.id())
                print("FAIL (%s)" % self._dt(test))
            print("  subtest %s" % subtest._subDescription())
            print("    " + self._exc_info_to_string(err, test).rstrip().replace("\n", "\n    "))
            sys.stdout.flush()

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1
        print("expected failure", flush=True)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        print("UNEXPECTED SUCCESS", flush=True)


def _short(test):
    return test.id()


def _flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _flatten(t)
        else:
            yield t


def main(argv):
    pats = []
    i = 0
    while i < len(argv):
        if argv[i] == "-k" and i + 1 < len(argv):
            pats.append(argv[i + 1])
            i += 2
        else:
            pats.append(argv[i])
            i += 1
    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = list(_flatten(suite))
    if pats:
        tests = [t for t in tests if any(p in t.id() for p in pats)]
    # keep classes together so each gets one sbxd
    res = Result()
    t0 = time.time()
    unittest.TestSuite(tests).run(res)
    failed = len(res.failed_ids) + len(res.unexpectedSuccesses)
    print("integration: %d passed, %d failed, %d skipped in %.0fs"
          % (res.passed, failed, len(res.skipped), time.time() - t0))
    print("INTEGRATION: passed=%d failed=%d skipped=%d" % (res.passed, failed, len(res.skipped)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

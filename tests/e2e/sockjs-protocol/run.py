"""Runs the vendored sockjs-protocol suite (a Python 2 file) on Python 3 without editing it:
provides the py2 names it uses, fixes its one py3 syntax error in memory, and runs every case
except those named with --exclude. Exits non-zero if any case fails or errors.

Usage: SOCKJS_URL=http://127.0.0.1:PORT python run.py [--exclude Class.test_name ...]"""
import builtins
import os
import sys
import types
import unittest

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
builtins.long = int
builtins.unichr = chr
sys.modules['unittest2'] = unittest

excluded = set()
args = sys.argv[1:]
while args:
    if args[0] == '--exclude' and len(args) > 1:
        excluded.add(args[1])
        args = args[2:]
    else:
        sys.exit('unknown argument: %s' % args[0])

with open(os.path.join(here, 'sockjs-protocol.py'), encoding='utf-8') as f:
    source = f.read()
# `lambda(ws): ...` is Python 2 only.
source = source.replace('lambda(ws):', 'lambda ws:')
suite_module = types.ModuleType('sockjs_protocol')
suite_module.__file__ = os.path.join(here, 'sockjs-protocol.py')
exec(compile(source, suite_module.__file__, 'exec'), suite_module.__dict__)

loader = unittest.TestLoader()
suite = unittest.TestSuite()
names = set()
for test in loader.loadTestsFromModule(suite_module):
    for case in test:
        name = '%s.%s' % (type(case).__name__, case._testMethodName)
        names.add(name)
        if name not in excluded:
            suite.addTest(case)
unknown = excluded - names
if unknown:
    sys.exit('excluded cases not in the suite: %s' % sorted(unknown))
result = unittest.TextTestRunner(verbosity=2).run(suite)
print('ran %d, excluded %d' % (result.testsRun, len(excluded)))
sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)

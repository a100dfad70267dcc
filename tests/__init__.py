"""The test suite of chip_fast. Each folder mirrors a subpackage (tests/ops tests chip_fast/ops,
one test_<module>.py per module tested; tests/test_rng.py and tests/test_demo.py the top-level
modules); tests/e2e/ holds what a user meets across modules: the command line, workflows, bad
input, the demo and the README example. Shared fixtures are in conftest.py, plain helpers in
helpers.py and kernel_helpers.py."""

"""Contract tests of the pod engine's drivers (the protocols of
:mod:`rktlet.pod.drivers`): each test is written once and runs against the
in-memory fake (``tests/fakes``, no root) and the real driver (root and the
real programs; skipped, saying why, without them). One module per driver."""

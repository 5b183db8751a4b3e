"""Eight host devices for the sharding tests, requested before JAX creates its CPU backend.

``tests/run.sh`` exports the same flag; ``setdefault`` keeps whatever the caller chose. If JAX's
backend already started with fewer devices (another suite initialised it first), the sharding test
reruns its check in a subprocess that has the flag.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

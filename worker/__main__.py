"""`python -m worker`: see worker.main for the command line."""

import os
import sys

# gRPC core writes its own log lines (e.g. a failed bind) to stderr, which would break
# the one-line failure contract; our line carries the reason. GRPC_VERBOSITY=debug
# still turns them on. Must be set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from worker.main import main  # noqa: E402

sys.exit(main())

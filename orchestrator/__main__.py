import os
import sys

# gRPC core would print its own lines (e.g. on a busy port) next to our one-line errors
# and JSON logs; daemons report failures themselves.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from orchestrator.main import main  # noqa: E402

sys.exit(main())

import sys

from pool_manager.main import main

sys.exit(main())

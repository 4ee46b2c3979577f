"""`python3 -m backupagent` in the agent container."""

import sys

from .agent import main

sys.exit(main())

"""`python -m appliance.cli`: the same as the `wardtap` command."""

import sys

from appliance.cli import main

sys.exit(main())

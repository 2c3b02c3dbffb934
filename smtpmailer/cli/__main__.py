"""``python -m smtpmailer.cli``."""

import sys

from smtpmailer.cli.main import main

sys.exit(main())

#!/bin/sh
# Run as root after installing or removing smtpmailer system-wide: Twisted keeps a plugin
# cache (dropin.cache) next to the plugin files, which the daemon's user cannot write.
# PYTHON names the interpreter smtpmailer was installed for (default: python3).
set -eu
"${PYTHON:-python3}" -c '
from twisted.plugin import IPlugin, getPlugins
names = sorted(getattr(p, "tapname", "") for p in getPlugins(IPlugin))
print("twisted plugin cache regenerated;", "smtpmailer found" if "smtpmailer" in names
      else "smtpmailer NOT found")
'

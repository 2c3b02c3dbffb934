"""Print setup.cfg's requirements one per line, so the Makefile has one source of truth.

Usage: requirements.py install_requires [EXTRA ...] > requirements.txt
"""

import configparser
import os
import sys

parser = configparser.ConfigParser()
parser.read(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "setup.cfg"))
for name in sys.argv[1:]:
    section = "options" if name == "install_requires" else "options.extras_require"
    for line in parser[section][name].splitlines():
        if line.strip():
            print(line.strip().replace(" ", ""))

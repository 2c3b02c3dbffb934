"""Run trial and end with a plain 'N passed, N failed' line, as CI reads it."""

import os
import re
import subprocess
import sys

command = [os.path.join(os.path.dirname(sys.executable), "trial"), *sys.argv[1:]]
process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
assert process.stdout is not None
summary = ""
for line in process.stdout:
    sys.stdout.write(line)
    sys.stdout.flush()
    if line.startswith(("PASSED", "FAILED")):
        summary = line
status = process.wait()
counts = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", summary)}
passed = counts.get("successes", 0)
failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
skipped = counts.get("skips", 0)
print(f"trial: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(status)

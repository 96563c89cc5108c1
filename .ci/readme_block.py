"""Prints the command block of README.md that follows the marker `<!-- ci: NAME -->`, so that CI
runs exactly what the README tells users to run (the two cannot drift apart)."""
import os
import re
import sys

name = sys.argv[1]
readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")
with open(readme) as f:
    text = f.read()
match = re.search(rf"<!-- ci: {re.escape(name)} -->\s*```bash\n(.*?)```", text, re.S)
if match is None:
    sys.exit(f"readme_block: README.md has no ```bash block after <!-- ci: {name} -->")
print(match.group(1), end="")

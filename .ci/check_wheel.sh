#!/usr/bin/env bash
# Builds the wheel a regular `pip install .` would install and imports it away from the source
# tree: catches a package, config or extension that the editable install used by the tests
# would find in the checkout anyway. Run inside the venv that has torch installed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
pip wheel --quiet --no-build-isolation --no-deps . -w "$out/wheel"
pip install --quiet --no-deps --target "$out/site" "$out"/wheel/nasops-*.whl
cd "$out"
PYTHONPATH="$out/site" python - <<'PY'
import torch
import nasops
assert nasops.__file__.startswith(__import__("os").getcwd()), nasops.__file__
for name in nasops.packaged_spaces():
    space = nasops.SearchSpace.load(name)
    net = nasops.Supernet(space)
    arch = space.min_arch()
    net.set_active(arch)
    net(torch.randn(1, 3, arch.resolution, arch.resolution))
print("check_wheel: ok,", nasops.packaged_spaces(), nasops._C.cpu_isa())
PY

"""The README's code is the code: its API example runs and its commands agree.

The API overview is executed as written, with only its sizes shrunk (fewer
images, epochs and draws) so it runs in seconds, on the real Fashion-MNIST
when the Debian package is installed.
"""

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FMNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

# What the example says -> what the test runs: the same calls, smaller.
_SHRINK = {"10_000)": "500)", "epochs=8": "epochs=1",
           "num_draws=1000": "num_draws=16"}


def _api_example() -> str:
  section = README.split("## API overview", 1)[1]
  return section.split("```python", 1)[1].split("```", 1)[0]


def test_api_example_shrinks_only_sizes():
  code = _api_example()
  for written in _SHRINK:
    assert code.count(written) == 1, (
        f"the README's API example no longer contains {written!r}; update "
        "_SHRINK in this test")


@pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_api_example_runs(capsys):
  code = _api_example()
  for written, run in _SHRINK.items():
    code = code.replace(written, run)
  scope = {}
  # pylint: disable-next=exec-used
  exec(compile(code, "README.md (API overview)", "exec"), scope)
  assert scope["x"].shape == (500, 28, 28, 1)
  assert scope["protected"].shape == scope["x"].shape
  assert scope["protected"].dtype == np.uint8
  # Class-wise EM at 32/255 changes the images, within the budget.
  change = np.abs(scope["protected"].astype(int) - scope["x"].astype(int))
  assert 0 < change.max() <= 32
  assert 0.0 <= scope["history"]["test_accuracy"][-1] <= 1.0
  assert scope["accs"].shape == (16,)
  assert np.all((scope["accs"] >= 0) & (scope["accs"] <= 1))
  # The printed minimum N for eta = 0.5 is the figure.
  assert capsys.readouterr().out.split()[-1] == "8920"


def test_setup_commands_match_ci():
  ci = (ROOT / ".ci" / "run").read_text()
  setup = README.split("## Set-up: two commands", 1)[1].split("```bash", 1)[1]
  setup = setup.split("```", 1)[0]
  commands = [line for line in setup.splitlines()
              if line and not line.startswith("#")]
  assert len(commands) == 2, commands
  install, test = commands
  assert "apt-get install -y dataset-fashion-mnist" in install
  assert 'pip install -e ".[test]"' in install
  assert "python -m experiments.quickstart --out runs/quick" in install
  # CI installs the same things and runs the README's test command.
  assert "dataset-fashion-mnist" in ci
  assert 'pip install -q -e ".[test]"' in ci
  assert ci.rstrip().splitlines()[-1] == test


def test_experiment_table_names_real_scripts():
  scripts = re.findall(r"^\| `experiments\.([a-z_]+)` \|", README, re.M)
  assert "quickstart" in scripts and "table" in scripts
  for name in scripts:
    assert (ROOT / "experiments" / f"{name}.py").exists(), name
  on_disk = {p.stem for p in (ROOT / "experiments").glob("*.py")}
  # Every runnable script is in the table (common.py and figures.py are
  # helpers, not scripts).
  assert on_disk - set(scripts) - {"__init__", "common", "figures"} == set()

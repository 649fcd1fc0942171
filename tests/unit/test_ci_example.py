"""docs/ci.md's GitHub Actions workflow is valid YAML, and its job-summary script turns what `fab rollout --json`
prints — a rollout, or a failure with its per-host causes — into the Markdown the job summary shows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync_agent.control.reports import rollout as rollout_report
from sync_agent.control.rollout import HostStaging, RolloutResult
from sync_agent.errors import HostFailures, error_json

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"


def workflow() -> dict[Any, Any]:
    block = re.search(r"`\.github/workflows/deploy\.yml`:\n\n```yaml\n(.*?)\n```", DOC.read_text(), re.S)
    assert block, "docs/ci.md has no deploy.yml workflow block"
    return dict(yaml.safe_load(block.group(1)))


def summary_of(output: dict[str, Any], tmp_path: Path) -> str:
    """The rollout step's Python, run on output as the step runs it (`python3 - rollout.json`)."""
    step = next(s for s in workflow()["jobs"]["deploy"]["steps"] if s.get("name") == "Roll out dist/")
    script = re.search(r"<<'EOF'\n(.*?)\nEOF\n", step["run"], re.S)
    assert script, step["run"]
    (tmp_path / "rollout.json").write_text(json.dumps(output))
    result = subprocess.run([sys.executable, "-", str(tmp_path / "rollout.json")], input=script.group(1),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_workflow_rolls_out_with_json_and_installs_frontfleet() -> None:
    steps = workflow()["jobs"]["deploy"]["steps"]
    runs = "\n".join(str(s.get("run", "")) for s in steps)
    assert "pip install 'frontfleet[controller]" in runs and "fab rollout --build dist/ --json" in runs
    assert '"$GITHUB_STEP_SUMMARY"' in runs


def test_the_summary_shows_the_release_and_what_each_host_was_sent(tmp_path: Path) -> None:
    result = RolloutResult("a1b2c3", "f0e0d0", staged={"web1": HostStaging("web1", files_sent=3, bytes_sent=2048),
                                                       "web2": HostStaging("web2", already_staged=True)},
                           switched=True, revision=7)
    shown = summary_of(rollout_report(result).data, tmp_path)
    assert "### Rollout of `a1b2c3`" in shown and "previous: `f0e0d0`" in shown and "revision 7" in shown
    assert "| web1 | 3 files, 2048 bytes |" in shown and "| web2 | already staged |" in shown


def test_the_summary_of_a_failed_rollout_names_each_host_and_its_cause(tmp_path: Path) -> None:
    failure = HostFailures("staging failed", {"web2": "no space left on device"}, "nothing was switched")
    shown = summary_of(error_json(failure), tmp_path)
    assert "### Rollout failed" in shown and "- **web2**: no space left on device" in shown

"""The Ansible side passes ansible-lint's production profile with no rule hidden."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fleet.deployment import BIN, REPO

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]

LINT_CONFIGS = (".ansible-lint", ".ansible-lint.yml", ".ansible-lint.yaml", ".config/ansible-lint.yml",
                ".config/ansible-lint.yaml")
HIDING_KEYS = ("skip_list", "exclude_paths", "warn_list", "mock_modules", "mock_roles")


def test_ansible_lint_production_profile_passes_on_the_whole_repo() -> None:
    """`ansible-lint --profile production` from the repo root exits 0."""
    result = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline"], cwd=REPO,
                            capture_output=True, text=True, timeout=540,
                            env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(Path.home()), "NO_COLOR": "1"})
    print(result.stdout[-6000:], result.stderr[-6000:], sep="\n")
    assert result.returncode == 0, "ansible-lint found violations; see the output above"
    assert "Passed" in result.stderr + result.stdout


def test_no_lint_rule_is_skipped_excluded_or_silenced() -> None:
    """No config skips or excludes anything, and no task carries a `# noqa`."""
    for name in LINT_CONFIGS:
        path = REPO / name
        if path.exists():
            config = yaml.safe_load(path.read_text()) or {}
            hidden = {key: config[key] for key in HIDING_KEYS if config.get(key)}
            assert not hidden, f"{name} hides rules or files: {hidden}"
    silenced = [f"{path.relative_to(REPO)}:{number}"
                for path in sorted((REPO / "ansible_collections").rglob("*")) if path.is_file()
                for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
                if "noqa" in line]
    silenced += [f"deploy.yml:{n}" for n, line in enumerate((REPO / "deploy.yml").read_text().splitlines(), 1)
                 if "noqa" in line]
    assert silenced == [], f"`noqa` silences ansible-lint in: {silenced}"

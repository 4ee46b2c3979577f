"""The language host's plugin scan (toolchain/pulumi-build/cmd/pulumi-language-python/plugin_scan.py):
the engine loads the plugins it reports before every preview, update and destroy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from importlib.metadata import version

ROOT = Path(__file__).resolve().parents[2]
SCAN = ROOT / "toolchain/pulumi-build/cmd/pulumi-language-python/plugin_scan.py"


def scan(*path_entries: Path) -> list[dict]:
    """Run the scan as the host does (`python -c SCRIPT`), with extra entries on sys.path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path_entries))}
    done = subprocess.run([sys.executable, "-c", SCAN.read_text()], env=env, capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return json.loads(done.stdout)


def package(site: Path, name: str, declaration: str) -> None:
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("")
    (site / name / "pulumi-plugin.json").write_text(declaration)


def test_the_docker_provider_sdk_of_this_project_is_found_with_its_version():
    assert scan() == [{"resource": True, "name": "docker", "version": version("pulumi-docker"), "module": "pulumi_docker"}]


def test_a_declaration_without_name_or_version_takes_them_from_its_distribution(tmp_path):
    package(tmp_path, "pulumi_bare", '{"resource": true}')
    info = tmp_path / "pulumi_bare-0.4.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pulumi_bare\nVersion: 0.4.0\n")
    (info / "top_level.txt").write_text("pulumi_bare\n")
    package(tmp_path, "pulumi_named", '{"resource": true, "name": "named", "version": "1.2.3", "server": "s"}')
    found = [p for p in scan(tmp_path) if p["name"] != "docker"]
    assert found == [{"resource": True, "name": "bare", "version": "0.4.0", "module": "pulumi_bare"},
                     {"resource": True, "name": "named", "version": "1.2.3", "server": "s", "module": "pulumi_named"}]


def test_what_declares_no_resource_plugin_or_is_unreadable_is_left_out(tmp_path):
    package(tmp_path, "pulumi_policy_only", '{"resource": false, "name": "policy"}')
    package(tmp_path, "pulumi_broken", '{"resource": tru')
    package(tmp_path, "pulumi_list", '["resource"]')
    assert [p["name"] for p in scan(tmp_path)] == ["docker"]

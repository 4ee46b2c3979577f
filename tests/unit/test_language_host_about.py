"""The language host's About (toolchain/pulumi-build/cmd/pulumi-language-python): the CLI waits for
it before every preview, update and destroy, so it reads a virtualenv's files instead of starting
its interpreter, and asks the interpreter only when the files do not say."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

import pytest
from google.protobuf import struct_pb2
from pulumi.runtime.proto import language_pb2, language_pb2_grpc

from tests.unit.plugin_process import serving


@pytest.fixture(scope="module")
def host():
    binary = shutil.which("pulumi-language-python")
    assert binary, "pulumi-language-python is not on PATH: run toolchain/setup.sh (scripts/test does)"
    with serving(Path(binary)) as channel:
        yield language_pb2_grpc.LanguageRuntimeStub(channel)


def about(host, project: Path) -> language_pb2.AboutResponse:
    options = struct_pb2.Struct()
    options.update({"toolchain": "pip", "virtualenv": "venv"})
    info = language_pb2.ProgramInfo(root_directory=str(project), program_directory=str(project),
                                    entry_point=".", options=options)
    return host.About(language_pb2.AboutRequest(info=info), timeout=30)


def virtualenv(project: Path, pyvenv_cfg: str, pip: list[str]) -> Path:
    """A virtualenv whose interpreter is this test's own; ``pip``: the pip dist-info versions it holds."""
    venv = project / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "pyvenv.cfg").write_text(pyvenv_cfg)
    for version in pip:
        (venv / "lib" / "python3.99" / "site-packages" / f"pip-{version}.dist-info").mkdir(parents=True)
    return venv


@pytest.mark.parametrize("key", ["version", "version_info"])
def test_the_version_and_pip_come_from_the_virtualenvs_files(host, tmp_path, key):
    venv = virtualenv(tmp_path, f"home = /nowhere\n{key} = 3.99.1\n", pip=["24.0"])
    answer = about(host, tmp_path)
    assert (answer.executable, answer.version, answer.metadata["toolchainVersion"]) == (
        str(venv / "bin" / "python"), "3.99.1", "24.0")


@pytest.mark.parametrize("pyvenv_cfg, pip", [("home = /nowhere\n", ["24.0"]),
                                             ("version = 3.99.1\n", []),
                                             ("version = 3.99.1\n", ["23.0", "24.0"])],
                         ids=["no version", "no pip", "two pips"])
def test_when_the_files_do_not_say_the_interpreter_is_asked(host, tmp_path, pyvenv_cfg, pip):
    virtualenv(tmp_path, pyvenv_cfg, pip)
    answer = about(host, tmp_path)
    assert answer.version == platform.python_version()

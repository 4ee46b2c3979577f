"""Drive stacks of this project through the Automation API.

Used by the command line and the end-to-end tests. The program is the project's own
`__main__.py` run by the real engine and language host (a local-program workspace on the
repository), so what is tested is exactly what `pulumi up` runs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import unquote, urlsplit

import yaml
from pulumi import automation as auto

from infra.config import DEFAULTS, PROJECT
from infra.targets import PostgresTarget, RedisTarget, Target

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("SIN_DATASTORES_HOME", Path.home() / ".sin-datastores"))
IMAGE_KEYS = ("postgresImage", "redisImage")
# Local images built by toolchain/images.sh, used when the configured ones are not on the host.
LOCAL_IMAGE_ENV = {"postgresImage": "SIN_LOCAL_POSTGRES_IMAGE", "redisImage": "SIN_LOCAL_REDIS_IMAGE"}


class StackError(RuntimeError):
    """A stack cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Settings:
    """Where state and the passphrase live; the tests point both at throwaway places."""

    backend_url: str
    passphrase_file: Path

    @classmethod
    def default(cls) -> "Settings":
        url = os.environ.get("PULUMI_BACKEND_URL") or f"file://{HOME / 'state'}"
        passphrase = Path(os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE") or HOME / "passphrase")
        return cls(url, passphrase)

    def env(self) -> dict[str, str]:
        """Environment for every Pulumi command: local state, no update checks, no downloads."""
        if self.backend_url.startswith("file://"):
            Path(self.backend_url[len("file://"):]).mkdir(parents=True, exist_ok=True)
        if not os.environ.get("PULUMI_CONFIG_PASSPHRASE") and not self.passphrase_file.exists():
            self.passphrase_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.passphrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        env = {
            "PULUMI_BACKEND_URL": self.backend_url,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        }
        if not os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
            env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(self.passphrase_file)
        return env


def _require_cli() -> None:
    if shutil.which("pulumi") is None:
        raise StackError("the pulumi CLI is not on PATH; run `eval \"$(toolchain/setup.sh)\"` "
                         "(or scripts/up, which does it for you)")


def workspace_options(settings: Settings) -> auto.LocalWorkspaceOptions:
    return auto.LocalWorkspaceOptions(work_dir=str(ROOT), env_vars=settings.env())


def workspace(settings: Optional[Settings] = None) -> auto.LocalWorkspace:
    """The project's workspace, to list or remove stacks."""
    _require_cli()
    return auto.LocalWorkspace(work_dir=str(ROOT), env_vars=(settings or Settings.default()).env())


def open_stack(name: str, settings: Optional[Settings] = None, create: bool = False) -> auto.Stack:
    """Select a stack; with ``create``, create it when it does not exist yet."""
    _require_cli()
    settings = settings or Settings.default()
    opts = workspace_options(settings)
    try:
        if create:
            return auto.create_or_select_stack(name, work_dir=str(ROOT), opts=opts)
        return auto.select_stack(name, work_dir=str(ROOT), opts=opts)
    except auto.StackNotFoundError:
        raise StackError(f"stack '{name}' does not exist in {settings.backend_url}; "
                         f"create it with `python -m infra up --stack {name}`") from None


def ensure_secrets(stack: auto.Stack) -> list[str]:
    """Generate and store (encrypted) any password the stack does not have yet."""
    config = stack.get_all_config()
    generated = []
    for key in ("postgresPassword", "redisPassword"):
        if f"{PROJECT}:{key}" not in config:
            stack.set_config(key, auto.ConfigValue(secrets.token_urlsafe(32), secret=True))
            generated.append(key)
    return generated


def configure(stack: auto.Stack, values: dict[str, str]) -> None:
    """Set plain (non-secret) config keys."""
    stack.set_all_config({k: auto.ConfigValue(str(v)) for k, v in values.items()})


def image_present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def local_images() -> dict[str, str]:
    """The images toolchain/images.sh built, by config key (it exports them; scripts/* eval it)."""
    images = {key: os.environ.get(env, "") for key, env in LOCAL_IMAGE_ENV.items()}
    missing = [LOCAL_IMAGE_ENV[key] for key, image in images.items() if not image]
    if missing:
        raise StackError(f"{', '.join(missing)} not set: run toolchain/images.sh through toolchain/setup.sh "
                         f"(scripts/up, scripts/test and scripts/bench do)")
    return images


def image_overrides(stack: auto.Stack, mode: str, say: Callable[[str], None]) -> dict[str, str]:
    """Images to use instead of the configured ones, without touching the stack file.

    ``config`` keeps the configured images (Docker pulls them if missing); ``local`` uses
    the images toolchain/images.sh built; ``auto`` uses a local image only for a configured
    one that is not on this Docker host. No registry is contacted to decide.
    """
    if mode == "config":
        return {}
    config = stack.get_all_config()
    overrides = {}
    for key in IMAGE_KEYS:
        configured = config.get(f"{PROJECT}:{key}")
        configured_image = configured.value if configured else DEFAULTS[key]
        if mode == "auto" and image_present(configured_image):
            continue
        local = os.environ.get(LOCAL_IMAGE_ENV[key])
        if not local:
            raise StackError(f"{configured_image} is not on this Docker host and {LOCAL_IMAGE_ENV[key]} names no "
                             f"local image; run toolchain/images.sh (scripts/up does) or pull {configured_image}")
        say(f"{key}: {configured_image} is not on this Docker host and no registry is used; "
            f"using the local image {local} (the stack file is unchanged)")
        overrides[key] = local
    return overrides


def overlay_config_file(stack: auto.Stack, overrides: dict[str, str]) -> Optional[str]:
    """A temporary copy of the stack's config file with ``overrides`` applied, or None."""
    if not overrides:
        return None
    source = ROOT / f"Pulumi.{stack.name}.yaml"
    data = yaml.safe_load(source.read_text()) if source.exists() else {}
    data = data or {}
    data.setdefault("config", {}).update({f"{PROJECT}:{k}": v for k, v in overrides.items()})
    handle = tempfile.NamedTemporaryFile("w", prefix=f"Pulumi.{stack.name}.", suffix=".yaml", delete=False)
    with handle:
        yaml.safe_dump(data, handle, sort_keys=True)
    return handle.name


@contextmanager
def image_config(stack: auto.Stack, images: str, say: Callable[[str], None]) -> Iterator[Optional[str]]:
    """The ``--config-file`` for a command: the stack file plus :func:`image_overrides`, or None."""
    config_file = overlay_config_file(stack, image_overrides(stack, images, say))
    try:
        yield config_file
    finally:
        if config_file:
            os.unlink(config_file)


def up(stack: auto.Stack, images: str, say: Callable[[str], None], **kwargs) -> auto.UpResult:
    """``pulumi up`` with the image choice of :func:`image_overrides`."""
    with image_config(stack, images, say) as config_file:
        return stack.up(config_file=config_file, color="never", **kwargs)


def target_from_outputs(name: str, outputs: dict[str, auto.OutputValue]) -> Target:
    """Connection details of a deployed stack, read from its outputs."""
    required = ("postgresHostUrl", "redisHostUrl", "postgresContainerName", "postgresIp", "postgresMajorVersion",
                "redisContainerName", "redisIp", "redisMajorVersion")
    missing = [key for key in required if key not in outputs]
    if missing:
        raise StackError(f"stack '{name}' is not up (no outputs {', '.join(missing)}); "
                         f"bring it up with `python -m infra up --stack {name}`")
    value = {key: outputs[key].value for key in required}
    pg, rd = urlsplit(value["postgresHostUrl"]), urlsplit(value["redisHostUrl"])
    return Target(
        stack=name,
        postgres=PostgresTarget(pg.hostname, pg.port, pg.path.lstrip("/"), unquote(pg.username),
                                unquote(pg.password), value["postgresContainerName"], value["postgresIp"],
                                int(value["postgresMajorVersion"])),
        redis=RedisTarget(rd.hostname, rd.port, unquote(rd.password), value["redisContainerName"], value["redisIp"],
                          int(value["redisMajorVersion"])),
    )


def deployed_target(name: str, settings: Optional[Settings] = None) -> Target:
    """The target of an existing, deployed stack."""
    return target_from_outputs(name, open_stack(name, settings).outputs())

"""Drive stacks of this project through the Automation API.

Used by the command line and the end-to-end tests. The program is the project's own
`__main__.py` run by the real engine and language host (a local-program workspace on the
repository), so what is tested is exactly what `pulumi up` runs.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import yaml
from pulumi import automation as auto

from infra.core.errors import InputError, OperationFailed, SinError
from infra.core import conflicts, dockercli, dockerhost, statecopy
from infra.core.engine import Engine
from infra.driver import backends, drift, locks, pulumi_errors
from infra.core.config import (BACKUP_PASSPHRASE_KEY, CLUSTER_SECRET_KEYS, DEFAULTS, PROJECT, SECRET_KEYS, TOPOLOGY_KEY,
                               StackConfig, docker_host, is_replicated, parse)
from infra.core.targets import DockerHost, Target
from infra.components.common import labels
from infra.deploy.registry import default_actor

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("SIN_DATASTORES_HOME", Path.home() / ".sin-datastores"))
IMAGE_KEYS = ("postgresImage", "redisImage", "backupImage")
# The post-deploy step of releases up to b4cf473, a resource of this project's own provider plugin
# (see legacy_step), the step before its provider.
LEGACY_PROVIDER = "sin-postdeploy"
LEGACY_STEP_TYPES = (f"{LEGACY_PROVIDER}:index:Step", f"pulumi:providers:{LEGACY_PROVIDER}")
# Local images built by toolchain/images.sh, used when the configured ones are not on the host.
LOCAL_IMAGE_ENV = {"postgresImage": "SIN_LOCAL_POSTGRES_IMAGE", "redisImage": "SIN_LOCAL_REDIS_IMAGE",
                   "backupImage": "SIN_LOCAL_BACKUP_IMAGE"}
# The replicated topology's (issue #27): Redis' is the single host's.
LOCAL_CLUSTER_IMAGE_ENV = {"patroniImage": "SIN_LOCAL_PATRONI_IMAGE", "etcdImage": "SIN_LOCAL_ETCD_IMAGE",
                           "haproxyImage": "SIN_LOCAL_HAPROXY_IMAGE", "redisImage": LOCAL_IMAGE_ENV["redisImage"]}
# Which state this is (a stack tag, kept in the backend beside the checkpoint: it outlives `destroy`
# and moves with the state); the stack's state copy on its Docker host names it (infra.core.statecopy).
STATE_ID_TAG = f"{PROJECT}:state-id"


class StackError(InputError):
    """A stack cannot be used as asked; the message says why and what to do."""


class StackMoved(StackError):
    """The stack's state was moved to another backend (``python -m infra move-state``)."""


class UpFailed(OperationFailed):
    """`up` failed half-way for a reason the message names with its fix; the next `up` completes the stack."""


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
            backends.file_root(self.backend_url).mkdir(parents=True, exist_ok=True)
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
        moved = backends.moved_to(settings.backend_url, name)
        if moved:
            raise StackMoved(f"stack '{name}' was moved from {settings.backend_url} to {moved} (`python -m infra "
                             f"move-state`): set PULUMI_BACKEND_URL='{moved}'") from None
        raise StackError(f"stack '{name}' does not exist in {settings.backend_url}; "
                         f"create it with `python -m infra up --stack {name}`") from None


def config_file(name: str) -> Path:
    """The stack's configuration file, Pulumi.<stack>.yaml (committed for dev)."""
    return ROOT / f"Pulumi.{name}.yaml"


def refuse_replicated(name: str, working: Sequence[str]) -> None:
    """`python -m infra` manages the ADR's single host only, so far (on a replicated stack it runs the
    commands ``working``); a replicated stack is refused before anything else runs (docs/replicated.md
    says what manages it)."""
    path = config_file(name)
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    if is_replicated((data.get("config") or {}).get(f"{PROJECT}:{TOPOLOGY_KEY}")):
        listed = [f"`{command}`" for command in working]
        raise StackError(f"stack '{name}' uses the replicated topology, which `python -m infra` does not manage yet "
                         f"beyond {', '.join(listed[:-1])} and {listed[-1]}; nothing was done. "
                         f"Use `pulumi preview|up|destroy --stack {name}` (docs/replicated.md)")


@contextmanager
def new_or_existing(name: str, settings: Optional[Settings] = None,
                    undo_on: tuple[type[BaseException], ...] = (InputError,),
                    trial: bool = False) -> Iterator[auto.Stack]:
    """Open the stack, creating it if needed. A stack created here is removed again, and its
    config file put back as it was, when the block raises one of ``undo_on`` (by default: the input
    was refused before the engine ran: the configuration, the Docker host, a conflict there) or, with
    ``trial``, in any case."""
    path = config_file(name)
    before = path.read_bytes() if path.exists() else None
    try:
        stack = open_stack(name, settings)
        created = False
    except StackMoved:
        raise  # not to be made again here, beside the moved one
    except StackError:
        stack, created = open_stack(name, settings, create=True), True

    def undo() -> None:
        stack.workspace.remove_stack(name)
        put_back(path, before)

    try:
        yield stack
    except undo_on:
        if created:
            undo()
        raise
    if created and trial:
        undo()


def remove_stack(stack: auto.Stack, keep_config: bool = True) -> None:
    """Remove the stack from the backend; ``keep_config``: but keep its config file. `pulumi stack rm`
    deletes Pulumi.<stack>.yaml, which for dev is a committed file, and which holds the encrypted
    passwords a retained volume still needs (a later `up` re-creates the stack from it)."""
    path = config_file(stack.name)
    kept = path.read_bytes() if path.exists() and keep_config else None
    stack.workspace.remove_stack(stack.name)
    put_back(path, kept)


def put_back(path: Path, content: Optional[bytes]) -> None:
    """Leave ``path`` holding ``content`` again (absent for None), touching it only if it differs."""
    if content is None:
        path.unlink(missing_ok=True)
    elif not path.exists() or path.read_bytes() != content:
        path.write_bytes(content)


def _pulumi(stack: auto.Stack, *args: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    """The `pulumi` CLI for ``stack`` with its workspace's environment, for what the Automation API
    does not offer the way we need it."""
    workspace = stack.workspace
    env = {**os.environ, **workspace.env_vars}
    if workspace.pulumi_home:
        env["PULUMI_HOME"] = workspace.pulumi_home
    return subprocess.run(["pulumi", *args, "--stack", stack.name], input=stdin, text=True, capture_output=True,
                          cwd=workspace.work_dir, env=env)


def set_secret(stack: auto.Stack, key: str, value: str) -> None:
    """Store ``value`` encrypted under ``key``; it goes to the CLI on stdin, never on a command line
    (the Automation API's ``set_config`` puts the value into the CLI's argv, visible to `ps`)."""
    proc = _pulumi(stack, "config", "set", "--secret", "--non-interactive", key, stdin=value)
    if proc.returncode != 0:
        raise StackError(f"storing {key} in stack '{stack.name}' failed: {proc.stderr.strip()}")


def backups_on(config: dict[str, auto.ConfigValue]) -> bool:
    schedule = config.get(f"{PROJECT}:backupSchedule")
    return bool(schedule and schedule.value.strip())


def replicated(config: dict[str, auto.ConfigValue]) -> bool:
    topology = config.get(f"{PROJECT}:{TOPOLOGY_KEY}")
    return bool(topology and is_replicated(topology.value))


def missing_passwords(config: dict[str, auto.ConfigValue]) -> list[str]:
    """The generated secrets the stack lacks: both passwords, the backup passphrase once backups
    are scheduled, the replicated topology's own once it is chosen."""
    keys = (*SECRET_KEYS, *((BACKUP_PASSPHRASE_KEY,) if backups_on(config) else ()),
            *(CLUSTER_SECRET_KEYS if replicated(config) else ()))
    return [key for key in keys if f"{PROJECT}:{key}" not in config]


def ensure_secrets(stack: auto.Stack, config: Optional[dict[str, auto.ConfigValue]] = None) -> list[str]:
    """Generate and store (encrypted) any password the stack does not have yet; return their keys."""
    missing = missing_passwords(stack.get_all_config() if config is None else config)
    for key in missing:
        set_secret(stack, key, secrets.token_urlsafe(32))
    return missing


def configure(stack: auto.Stack, values: dict[str, str]) -> None:
    """Set plain (non-secret) config keys."""
    stack.set_all_config({k: auto.ConfigValue(str(v)) for k, v in values.items()})


def image_present(image: str, env: Optional[dict[str, str]] = None) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                          env={**os.environ, **(env or {})}).returncode == 0


def local_images(names: dict[str, str] = LOCAL_IMAGE_ENV) -> dict[str, str]:
    """The images toolchain/images.sh built, by config key (it exports them; scripts/* eval it);
    ``names``: config key -> environment variable (LOCAL_CLUSTER_IMAGE_ENV for the replicated topology)."""
    images = {key: os.environ.get(env, "") for key, env in names.items()}
    missing = [names[key] for key, image in images.items() if not image]
    if missing:
        raise StackError(f"{', '.join(missing)} not set: run toolchain/images.sh through toolchain/setup.sh "
                         f"(scripts/up, scripts/test and scripts/bench do)")
    return images


def image_overrides(config: dict[str, auto.ConfigValue], mode: str, say: Callable[[str], None],
                    host: Optional[dockerhost.Session] = None, copy: bool = False) -> dict[str, str]:
    """Images to use instead of the configured ones (``config``: the stack's values), without
    touching the stack file.

    ``config`` mode keeps the configured images (Docker pulls them if missing); ``local`` uses
    the images toolchain/images.sh built; ``auto`` uses a local image only for a configured
    one that is not on the stack's Docker host. No registry is contacted to decide. A remote
    host (``host``) that lacks a chosen local image gets a copy of it when ``copy`` (for `up`;
    a preview only says so).
    """
    if mode == "config":
        return {}
    env = host.docker_env if host else {}
    overrides = {}
    for key in IMAGE_KEYS:
        if key == "backupImage" and not backups_on(config):
            continue
        configured = config.get(f"{PROJECT}:{key}")
        configured_image = configured.value if configured else DEFAULTS[key]
        if mode == "auto" and image_present(configured_image, env):
            continue
        local = os.environ.get(LOCAL_IMAGE_ENV[key])
        if not local:
            raise StackError(f"{configured_image} is not on the stack's Docker host and {LOCAL_IMAGE_ENV[key]} names "
                             f"no local image; run toolchain/images.sh (scripts/up does) or pull {configured_image}")
        say(f"{key}: {configured_image} is not on the stack's Docker host and no registry is used; "
            f"using the local image {local} (the stack file is unchanged)")
        if host and host.host.is_ssh and not image_present(local, env):
            if not copy:
                say(f"{local} is not on {host.host.describe()}: `up` copies it there")
                overrides[key] = local
                continue
            started = time.monotonic()
            size = dockerhost.copy_image(local, host)
            say(f"copied {local} to {host.host.describe()} ({size / 1e6:.0f} MB in {time.monotonic() - started:.1f} s)")
        overrides[key] = local
    return overrides


def validate(name: str, config: dict[str, auto.ConfigValue], overrides: Optional[dict[str, str]] = None,
             passwords_pending: Sequence[str] = ()) -> StackConfig:
    """The configuration exactly as the program will parse it; :class:`infra.core.config.ConfigError`
    lists every problem. ``passwords_pending`` are about to be generated, so not missing."""
    prefix = f"{PROJECT}:"
    raw = {key[len(prefix):]: value.value for key, value in config.items() if key.startswith(prefix)}
    secret = {key[len(prefix):] for key, value in config.items() if key.startswith(prefix) and value.secret}
    raw.update(overrides or {})
    for key in passwords_pending:
        raw[key], secret = secrets.token_urlsafe(32), secret | {key}
    return parse(raw, name, PROJECT, secret_keys=secret)


def overlay_config_file(stack: auto.Stack, overrides: dict[str, str]) -> Optional[str]:
    """A temporary copy of the stack's config file with ``overrides`` applied, or None."""
    if not overrides:
        return None
    source = config_file(stack.name)
    data = yaml.safe_load(source.read_text()) if source.exists() else {}
    data = data or {}
    data.setdefault("config", {}).update({f"{PROJECT}:{k}": v for k, v in overrides.items()})
    handle = tempfile.NamedTemporaryFile("w", prefix=f"Pulumi.{stack.name}.", suffix=".yaml", delete=False)
    with handle:
        yaml.safe_dump(data, handle, sort_keys=True)
    return handle.name


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepared_config` found before the engine runs."""

    config_file: Optional[str]
    """The ``--config-file`` for the command: the stack file plus :func:`image_overrides`, or None."""
    deployment: dict
    """The stack's exported state, read once for the look at the host and what runs before the engine."""
    identity: Optional[str]
    """The state's id (:func:`state_id`)."""
    looked: bool
    """Whether the Docker host was looked at for conflicts (not possible on a TLS or context address)."""


@contextmanager
def prepared_config(stack: auto.Stack, images: str, say: Callable[[str], None],
                    generate_passwords: bool = False, copy_images: bool = False) -> Iterator[Prepared]:
    """Check the configuration and the Docker host before the engine starts, then yield what was found
    (:class:`Prepared`), with the stack's Docker host reachable (:func:`infra.core.dockerhost.using`) for
    the whole block.

    Raises :class:`infra.core.config.ConfigError`, :class:`infra.core.dockerhost.DockerHostError` when the
    stack's Docker host cannot be reached or used, or :class:`infra.core.conflicts.HostConflicts` when it
    holds a name, port or subnet the stack would take, with nothing changed. With
    ``generate_passwords``, passwords the stack does not have yet are generated (after the checks)
    and stored encrypted; with ``copy_images``, a remote host gets the local images it lacks."""
    config = stack.get_all_config()
    pending = missing_passwords(config) if generate_passwords else ()
    checked = validate(stack.name, config, passwords_pending=pending)
    with dockerhost.session(checked.docker) as host:
        # Before `using`: a copied image is read from the engine this process was pointed at.
        overrides = image_overrides(config, images, say, host, copy_images)
        deployment = exported_deployment(stack)
        identity = state_id(stack)
        looked = look_at_host(validate(stack.name, config, overrides, pending), deployment, host, say, identity)
        refuse_lowered_redis_memory(stack, checked, deployment, say)
        for key in ensure_secrets(stack, config) if generate_passwords else ():
            say(f"generated {key} and stored it as a Pulumi secret in Pulumi.{stack.name}.yaml")
        overlay = overlay_config_file(stack, overrides)
        # The program need not look again, without the state's names to tell drift from a conflict.
        stack.workspace.env_vars[conflicts.LOOKED_ENV] = stack.name
        try:
            with dockerhost.using(host):
                yield Prepared(overlay, deployment, identity, looked)
        finally:
            stack.workspace.env_vars.pop(conflicts.LOOKED_ENV, None)
            if overlay:
                os.unlink(overlay)


def look_at_host(cfg: StackConfig, deployment: dict, host: dockerhost.Session, say: Callable[[str], None],
                 identity: Optional[str]) -> bool:
    """Refuse what the stack would collide with on its Docker host (:mod:`infra.core.conflicts`); the
    names its state declares are its own, whatever their labels (drift, which `up` repairs), and a
    container of the stack the state does not know is refused (a lost state, or the wrong one), as is
    an environment whose state copy names another state than ``identity`` (this state's id). False when
    this client cannot look there."""
    engine = Engine.of(host.docker_env)
    if engine is None:
        say(f"{host.host.describe()}: could not look for conflicts before creating (a TLS or context address); "
            f"a taken name, port or subnet shows as Docker's error")
        return False
    declared = drift.declared(deployment)
    exempt = frozenset(o.name for o in (*declared.containers, *declared.volumes, *declared.networks))
    # What a killed `up` created without recording it is the state's too (finish_interrupted removes it).
    known = exempt | {item.name for item in drift.interrupted(deployment)}
    conflicts.check(engine, cfg, host.host.describe(), exempt, known, identity)
    return True


def refuse_lowered_redis_memory(stack: auto.Stack, cfg: StackConfig, deployment: dict,
                                say: Callable[[str], None]) -> None:
    """Refuse a ``redisMemoryMb`` lowered below what the deployed Redis holds
    (:mod:`infra.deploy.redis_memory`); Redis is read only when the configuration lowers the limit
    the state gives it. Where it cannot be read (a host down, no outputs yet), this is said and not checked.
    A replicated stack's program looks itself, where it reads the cluster (plain `pulumi` too)."""
    deployed = max((c.memory_mb for c in drift.declared(deployment).containers if c.role == "redis"), default=0)
    if cfg.cluster or cfg.redis.memory_mb >= deployed:
        return
    from infra.deploy import redis_memory  # the database clients load only for such a change
    try:
        with dockerhost.reach(target_of(stack)) as target:
            redis_memory.refuse_if_too_full(target.redis, cfg.redis.memory_mb, stack.name)
    except redis_memory.RedisTooFull:
        raise
    except SinError as exc:
        say(f"redisMemoryMb lowered from {deployed} to {cfg.redis.memory_mb}; what Redis holds could not be read, "
            f"so whether it fits was not checked: {exc}")


def up(stack: auto.Stack, images: str, say: Callable[[str], None], generate_passwords: bool = False,
       accept_data_loss: bool = False, **kwargs) -> auto.UpResult:
    """``pulumi up`` after :func:`prepared_config`, :func:`finish_interrupted`, :func:`forget_legacy_step`
    and :func:`repair_drift`; a conflict Docker found only while it ran is named with its setting."""
    with prepared_config(stack, images, say, generate_passwords, copy_images=True) as prepared:
        finish_interrupted(stack, prepared.deployment, say)
        forget_legacy_step(stack, prepared.deployment, say)
        repair_drift(stack, say, accept_data_loss, prepared.deployment)
        try:
            return stack.up(config_file=prepared.config_file, color="never", **kwargs)
        except auto.CommandError as exc:
            late = conflicts.explain_failure(str(exc), validate(stack.name, stack.get_all_config()))
            if late is None:
                raise
            raise UpFailed(late) from None
        finally:
            keep_state_copy(stack, say, prepared.identity, claim=prepared.looked)


def destroy(stack: auto.Stack, say: Callable[[str], None], release: bool = False, **kwargs) -> auto.DestroyResult:
    """``pulumi destroy``, with what the engine cannot handle taken care of around it: what a killed `up`
    left unrecorded (its containers first, which would hold the network and volumes) and the post-deploy
    step of release b4cf473 (:func:`forget_legacy_step`), so nothing of the stack is left but the data
    volumes it keeps, and its state copy, which keeps them this state's (removed when no volume is kept,
    or with ``release``, so that a new state of the stack may take them)."""
    with dockerhost.session(docker_host_of(stack)) as host, dockerhost.using(host):
        deployment = exported_deployment(stack)
        left = finish_interrupted(stack, deployment, say)
        forget_legacy_step(stack, deployment, say)
        try:
            result = stack.destroy(color="never", **kwargs)
        except BaseException:
            keep_state_copy(stack, say)
            raise
        if release or not retains_volumes(stack):
            statecopy.remove(PROJECT, stack.name)
        else:
            keep_state_copy(stack, say)
        if any(item.kind == "volume" for item in left) and not retains_volumes(stack):
            remove_interrupted(stack, left, say, keep_volumes=False)
        engine = Engine.of(host.docker_env)
        if engine is not None:
            conflicts.remove_probes(engine, stack.name)
        return result


def retains_volumes(stack: auto.Stack) -> bool:
    return validate(stack.name, stack.get_all_config()).retain_volumes


def finish_interrupted(stack: auto.Stack, deployment: dict, say: Callable[[str], None]) -> list[drift.Interrupted]:
    """Before the engine runs, with the stack's Docker host in use and ``deployment`` its exported state:
    remove the stale lock a killed command of this machine left (:mod:`infra.driver.locks`) and refuse
    while another command holds the lock (before touching the Docker host), then remove the
    containers and networks a killed `up` created without recording them, which the next create would
    collide with. Their data volumes stay (the next `up` attaches them again); what was found is returned."""
    refuse_while_locked(stack, say)
    found = drift.interrupted(deployment)
    remove_interrupted(stack, found, say, keep_volumes=True)
    forget_pending_creates(stack, deployment)
    return found


def refuse_while_locked(stack: auto.Stack, say: Callable[[str], None]) -> None:
    """Remove the stale lock a killed command of this machine left (:mod:`infra.driver.locks`); refuse
    while another command holds the lock: it is changing the stack, so touch nothing of it."""
    backend = stack.workspace.env_vars.get("PULUMI_BACKEND_URL", Settings.default().backend_url)
    locks.clear_stale(backend, PROJECT, stack.name, say)
    held = locks.locks_of(backend, PROJECT, stack.name)
    if held:
        raise pulumi_errors.locked(stack.name, [lock.describe() for lock in held])


def forget_pending_creates(stack: auto.Stack, deployment: dict) -> None:
    """Drop the state's pending creates once :func:`remove_interrupted` dealt with them. The engine keeps
    them, warning on every `up`, until an interactive `pulumi refresh` clears them; kept, a later command
    would take the object a completed `up` created under that name for a leftover."""
    pending = deployment.get("pending_operations") or []
    kept = [op for op in pending if op.get("type") != "creating"]
    if len(kept) == len(pending):
        return
    import_deployment(stack, {**deployment, "pending_operations": kept}, "clearing the interrupted creates from")
    deployment["pending_operations"] = kept


def import_deployment(stack: auto.Stack, deployment: dict, doing: str) -> None:
    """`pulumi stack import` of ``deployment`` (secrets as they are, encrypted); ``doing`` names the
    purpose in the error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        path.write_text(json.dumps({"version": 3, "deployment": deployment}))
        proc = _pulumi(stack, "stack", "import", "--file", str(path))
    if proc.returncode != 0:
        raise StackError(f"{doing} the state of stack '{stack.name}' failed: {proc.stderr.strip()}")


def state_id(stack: auto.Stack) -> Optional[str]:
    """This state's id (:data:`STATE_ID_TAG`); None until its first `up` or `destroy` wrote a state copy."""
    return stack.list_tags().get(STATE_ID_TAG)


def new_state_id(stack: auto.Stack) -> str:
    identity = secrets.token_hex(8)
    stack.set_tag(STATE_ID_TAG, identity)
    return identity


def keep_state_copy(stack: auto.Stack, say: Callable[[str], None], identity: Optional[str] = None,
                    claim: bool = False) -> None:
    """Write the stack's state onto its Docker host (the session in use) when it differs from the copy
    there (:mod:`infra.core.statecopy`), giving this state an id first if it has none (``identity``: its
    id, when the caller read it). With ``claim`` (an `up` whose look at the host found nothing of the stack
    another state made), a copy of another state, beside nothing it protects, is replaced. A copy that
    cannot be written is said, not raised: the command itself went as it went."""
    try:
        deployment = exported_deployment(stack)
        identity = identity or state_id(stack) or new_state_id(stack)
        current = statecopy.read(PROJECT, stack.name)
        if current is not None and current.state_id != identity and claim:
            statecopy.remove(PROJECT, stack.name)
            current = None
        if current is not None and current.state_id == identity and current.deployment == deployment:
            return
        serial = current.serial + 1 if current is not None and current.state_id == identity else 0
        statecopy.write(statecopy.StateCopy(PROJECT, stack.name, identity, serial,
                                            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                            default_actor(), deployment),
                        labels(PROJECT, stack.name, statecopy.ROLE))
    except (OperationFailed, auto.CommandError) as exc:
        say(f"could not keep the copy of the state of stack '{stack.name}' on its Docker host ({exc}); "
            f"the next `up` writes it")


def remove_interrupted(stack: auto.Stack, found: list[drift.Interrupted], say: Callable[[str], None],
                       keep_volumes: bool) -> None:
    """Remove each of ``found`` that the stack's Docker host (the session in use) holds with the stack's
    labels, never anything else."""
    for item in sorted(found, key=lambda i: ("container", "network", "volume").index(i.kind)):
        if item.kind == "volume" and keep_volumes:
            continue
        seen = dockercli.inspect(item.kind, item.name)
        labels = ((seen or {}).get("Config") or seen or {}).get("Labels") or {}
        if seen is None or labels.get(dockercli.STACK_LABEL) != stack.name:
            continue
        if item.kind == "container":
            dockercli.docker("stop", "--time", "30", item.name)
        dockercli.docker(item.kind, "rm", item.name)
        say(f"removed {item.kind} {item.name}, which an interrupted `up` created without recording it")


def preview(stack: auto.Stack, images: str, say: Callable[[str], None],
            **kwargs) -> tuple[auto.PreviewResult, list[drift.Finding]]:
    """``pulumi preview`` after :func:`prepared_config`, and the drift found against the state as it
    was before the preview's refresh. A state that still holds the post-deploy step of release b4cf473
    or earlier (:func:`legacy_step`) is previewed as the next `up` will find it, without that step, on
    a copy: a preview changes no state."""
    with prepared_config(stack, images, say) as prepared:
        found = drift.find(drift.declared(prepared.deployment))
        legacy = legacy_step(prepared.deployment)
        if not legacy:
            return stack.preview(config_file=prepared.config_file, color="never", **kwargs), found
        say(f"the state of stack '{stack.name}' still holds the post-deploy step of release b4cf473 or earlier "
            f"(provider {LEGACY_PROVIDER}, not part of Pulumi); the next `python -m infra up` removes it from the "
            f"state and creates the step anew as a Pulumi dynamic resource, which verifies again. Previewing "
            f"the state as that `up` will find it (a copy; this stack's state is not changed)")
        with state_without(stack, legacy) as copy:
            return copy.preview(config_file=prepared.config_file, color="never", **kwargs), found


def legacy_step(deployment: dict) -> list[str]:
    """The URNs of the post-deploy step of release b4cf473 and earlier in ``deployment`` (a resource of
    this project's own provider plugin, which only its toolchain built), the step before its provider.
    The engine cannot refresh or delete them without that plugin, and their delete did nothing (the
    schema lives in the data volume)."""
    resources = deployment.get("resources") or []
    return [r["urn"] for typ in LEGACY_STEP_TYPES for r in resources if r.get("type") == typ]


def forget_legacy_step(stack: auto.Stack, deployment: dict, say: Callable[[str], None]) -> None:
    """Remove :func:`legacy_step` from the stack's state before the engine runs, which then creates the
    new step (and verifies again)."""
    urns = legacy_step(deployment)
    if not urns:
        return
    proc = _pulumi(stack, "state", "delete", "--yes", *urns)
    if proc.returncode != 0:
        raise StackError(f"removing the post-deploy step of release b4cf473 from the state of stack '{stack.name}' "
                         f"failed: {proc.stderr.strip()}; remove it by hand with `pulumi state delete --yes --stack "
                         f"{stack.name} {' '.join(repr(u) for u in urns)}`, then run `up` again")
    say(f"removed the post-deploy step of release b4cf473 or earlier (provider {LEGACY_PROVIDER}) from the state "
        f"of stack '{stack.name}'; `up` creates it anew as a Pulumi dynamic resource, which verifies again")


def checkpoint_file(backend_dir: Path, name: str) -> Optional[Path]:
    """The file a local file backend keeps the stack's state in (its project or its legacy layout)."""
    stacks_dir = backend_dir / ".pulumi" / "stacks"
    for folder in (stacks_dir / PROJECT, stacks_dir):
        for suffix in (".json", ".json.gz"):
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None


def copy_state_without(backend_dir: Path, name: str, urns: Sequence[str], copy_dir: Path) -> bool:
    """Lay out in ``copy_dir`` a file backend holding the stack's state from ``backend_dir`` without
    ``urns``; False when ``backend_dir`` holds no state of the stack."""
    source = checkpoint_file(backend_dir, name)
    if source is None:
        return False
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as handle:
        checkpoint = json.load(handle)
    latest = checkpoint.get("checkpoint", {}).get("latest") or {}
    latest["resources"] = [r for r in latest.get("resources") or [] if r.get("urn") not in set(urns)]
    target = copy_dir / source.relative_to(backend_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with opener(target, "wt") as handle:
        json.dump(checkpoint, handle)
    meta = backend_dir / ".pulumi" / "meta.yaml"
    if meta.is_file():
        shutil.copyfile(meta, copy_dir / ".pulumi" / "meta.yaml")
    return True


@contextmanager
def state_without(stack: auto.Stack, urns: Sequence[str]) -> Iterator[auto.Stack]:
    """The stack on a throwaway file backend holding a copy of its state without ``urns``."""
    workspace = stack.workspace
    url = workspace.env_vars.get("PULUMI_BACKEND_URL", "")
    copy_dir = Path(tempfile.mkdtemp(prefix="sin-preview-state-"))
    try:
        if not (url.startswith("file://") and
                copy_state_without(backends.file_root(url), stack.name, urns, copy_dir)):
            raise StackError(f"stack '{stack.name}' is not in a local file backend ({url or 'unset'}), so its state "
                             f"cannot be previewed without the old post-deploy step; run `python -m infra up --stack "
                             f"{stack.name}` once (it removes that step and changes nothing else), then preview")
        env = {**workspace.env_vars, "PULUMI_BACKEND_URL": f"file://{copy_dir}"}
        yield auto.select_stack(stack.name, work_dir=workspace.work_dir, opts=auto.LocalWorkspaceOptions(
            work_dir=workspace.work_dir, env_vars=env, pulumi_home=workspace.pulumi_home))
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)


def drift_of(stack: auto.Stack) -> list[drift.Finding]:
    """How the Docker host differs from the stack's state (see :mod:`infra.driver.drift`)."""
    return drift.find(drift.declared(exported_deployment(stack)))


# The one resource a state holds after `pulumi stack init` and nothing else, or after `destroy`.
STACK_TYPE = "pulumi:pulumi:Stack"


def managed_resources(deployment: dict) -> list[dict]:
    """A deployment's resources besides the stack itself: none in a new state, or after `down`."""
    return [r for r in deployment.get("resources") or [] if r.get("type") != STACK_TYPE]


def exported_deployment(stack: auto.Stack) -> dict:
    """The ``deployment`` of `pulumi stack export`, secrets left encrypted (the Automation API's
    ``export_stack`` decrypts them all, which costs a key derivation and is not needed here)."""
    proc = _pulumi(stack, "stack", "export")
    if proc.returncode != 0:
        raise StackError(f"reading the state of stack '{stack.name}' failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout).get("deployment") or {}


def repair_drift(stack: auto.Stack, say: Callable[[str], None], accept_data_loss: bool = False,
                 deployment: Optional[dict] = None) -> None:
    """Before the engine runs: refuse to start a service on a new, empty volume in place of one the
    Docker host lost (unless ``accept_data_loss``), and remove the containers under a declared name that
    are not what the stack declared (re-created or changed by hand), which the engine would collide with
    or keep as they are. They are stopped gracefully; their volumes stay, so the data does. ``deployment``:
    the stack's state as :func:`exported_deployment` gives it, if already read."""
    found = drift.find(drift.declared(deployment if deployment is not None else exported_deployment(stack)))
    lost = [f.name for f in found if f.what == "data volume" and f.kind == "missing"]
    if lost and not accept_data_loss:
        raise StackError(f"data volume {', '.join(lost)} of stack '{stack.name}' is gone from the Docker host; `up` "
                         f"would start on a new, EMPTY volume. Put the volume back, or run `python -m infra up "
                         f"--stack {stack.name} --accept-data-loss` and then `python -m infra restore --stack "
                         f"{stack.name} --from DIR` with your last backup")
    for finding in found:
        say(f"drift: {finding.line()}")
        if finding.replaced_by_up:
            dockercli.docker("stop", "--time", "30", finding.name)
            dockercli.docker("rm", finding.name)


def target_from_outputs(name: str, outputs: dict[str, auto.OutputValue], docker: DockerHost = DockerHost()) -> Target:
    """Connection details of a deployed stack, from its ``connection`` output; ``docker`` is its Docker host."""
    if "connection" not in outputs:
        if "postgresHostUrl" in outputs:
            raise StackError(f"stack '{name}' was last brought up by an earlier release, whose outputs lack "
                             f"`connection`; run `python -m infra up --stack {name}` once (it changes nothing else)")
        raise StackError(f"stack '{name}' is not up (no outputs); bring it up with `python -m infra up --stack {name}`")
    target = Target.from_dict(outputs["connection"].value)
    remote = docker.is_ssh
    return replace(target, docker=docker, postgres=replace(target.postgres, tunnel_required=remote),
                   redis=replace(target.redis, tunnel_required=remote))


def docker_host_of(stack: auto.Stack) -> DockerHost:
    """The Docker host the stack's configuration names."""
    prefix = f"{PROJECT}:"
    return docker_host({k[len(prefix):]: v.value for k, v in stack.get_all_config().items() if k.startswith(prefix)})


def deployed_target(name: str, settings: Optional[Settings] = None) -> Target:
    """The target of an existing, deployed stack."""
    return target_of(open_stack(name, settings))


def target_of(stack: auto.Stack) -> Target:
    """The target a deployed stack's outputs give."""
    return target_from_outputs(stack.name, stack.outputs(), docker_host_of(stack))


@contextmanager
def reached(name: str, settings: Optional[Settings] = None, engine: bool = False) -> Iterator[Target]:
    """A deployed stack's target, reachable for one command (through an SSH tunnel on a remote
    host, with docker CLI calls going there too; a replicated stack's members answer on their own
    addresses: PostgreSQL through the endpoint on the leader's host, Redis on its master). ``engine``:
    a replicated stack's docker CLI calls go to its leader's host (a restore's scratch containers)."""
    target = deployed_target(name, settings)
    if target.cluster:
        from infra.deploy import replicated  # the database clients load for a replicated stack only
        state = replicated.read_state(target.cluster, target.redis.port, target.redis.password)
        resolved = replicated.resolve(target, state)
        if not engine:
            yield resolved
            return
        if len(state.leaders) != 1:
            raise StackError(f"stack '{name}' has {len(state.leaders)} PostgreSQL leaders now, and this command "
                             f"works on the leader's host; nothing was done: see `python -m infra status --stack "
                             f"{name}`")
        with dockerhost.session(cluster_host(name, resolved.postgres.host, settings)) as session, \
                dockerhost.using(session):
            yield resolved
        return
    with dockerhost.reach(target) as reached:
        yield reached


def cluster_host(name: str, address: str, settings: Optional[Settings] = None) -> DockerHost:
    """The Docker host of a replicated stack's member at ``address``, as its configuration reaches it."""
    cluster = stack_config(name, settings).cluster
    for host in cluster.hosts if cluster else ():
        if host.address == address:
            return host.docker
    raise StackError(f"{address} leads stack '{name}' but is not in its replicatedHosts; run `pulumi up --stack "
                     f"{name}` with the host list the cluster runs on")


def stack_config(name: str, settings: Optional[Settings] = None) -> StackConfig:
    """A stack's validated configuration, secrets included (the backups' passphrase and S3 keys)."""
    stack = open_stack(name, settings)
    return validate(name, stack.get_all_config())

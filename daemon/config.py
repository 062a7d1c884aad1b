"""Settings: load the YAML file once, resolve ``${VAR}`` and ``*_file`` secrets, validate it whole.

Owns the shape of the configuration (SPEC section 9) and the frozen objects the rest of the code reads.
Every problem is reported at once with its key path (``projects[0].tags[1].lifetime: ...``); callers
turn :class:`ConfigError` into exit code 2. Secrets are :class:`pydantic.SecretStr`, hidden in repr.
Must not open sockets, databases or files other than the config file and ``*_file`` secrets.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.domain.model import PatternLifetime, UntagMethod
from daemon.domain.patterns import parse_duration, validate_pattern
from daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/janitor.yaml"
DEFAULT_PROTECTED = ("latest", "main", "master", "stable", r"v?\d+(\.\d+)*")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected a duration such as 30s, 15m, 2h or 7d")


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


class GitLabSettings(_Frozen):
    url: str = "https://gitlab.example.com"
    #: For reconcile and branch lookups in every project (``read_api`` is enough); hooks install needs
    #: ``api`` and the Maintainer role. Writes never use it. Unset: each project's ``registry_token``.
    api_token: SecretStr | None = None
    #: The secret token of GitLab's system hook (Admin > System hooks), one for the whole instance: it
    #: authenticates deliveries sent with ``X-Gitlab-Event: System Hook`` for any configured project.
    system_hook_secret: SecretStr | None = None
    timeout: float = 10.0

    _blank = field_validator("api_token", "system_hook_secret", mode="before")(lambda cls, v: _blank_is_none(v))


class RegistrySettings(_Frozen):
    url: str = "http://127.0.0.1:5000"
    hostnames: tuple[str, ...] = ()
    untag_method: UntagMethod = "auto"
    requests_per_second: float = Field(10.0, ge=0)
    burst: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _default_hostnames(self) -> RegistrySettings:
        if not self.hostnames:
            host = self.url.split("://", 1)[-1].split("/", 1)[0]
            object.__setattr__(self, "hostnames", (host,))
        return self


class StorageSettings(_Frozen):
    url: str = "sqlite:///data/janitor.db"

    @field_validator("url")
    @classmethod
    def _sqlite_only(cls, value: str) -> str:
        if not value.startswith("sqlite:///"):
            raise ValueError("only sqlite:///relative/path.db or sqlite:////absolute/path.db is supported")
        return value

    @property
    def sqlite_path(self) -> str:
        return self.url[len("sqlite:///") :]


class ServerSettings(_Frozen):
    bind: str = "127.0.0.1:8080"
    admin_token: SecretStr | None = None
    registry_notification_token: SecretStr | None = None
    metrics_require_token: bool = False
    max_body_bytes: int = 25 * 1024 * 1024

    _blank = field_validator("admin_token", "registry_notification_token", mode="before")(
        lambda cls, v: _blank_is_none(v)
    )


class WorkerSettings(_Frozen):
    poll_interval: float = 5.0
    reconcile_interval: float = 600.0
    stuck_pipeline_after: float = Field(86400.0, gt=0)

    _durations = field_validator("poll_interval", "reconcile_interval", "stuck_pipeline_after", mode="before")(
        lambda cls, v: _duration(v)
    )


class TagPattern(_Frozen):
    pattern: str
    lifetime: PatternLifetime | None = None
    ttl: float | None = None

    _ttl = field_validator("ttl", mode="before")(lambda cls, v: None if v is None else _duration(v))

    @field_validator("pattern")
    @classmethod
    def _known_variables(cls, value: str) -> str:
        validate_pattern(value)
        return value

    @model_validator(mode="after")
    def _one_of(self) -> TagPattern:
        if (self.lifetime is None) == (self.ttl is None):
            raise ValueError("give exactly one of 'lifetime' (pipeline, merge_request, branch) or 'ttl'")
        return self


class Policy(_Frozen):
    """The per-project keys that ``defaults`` may set for every project."""

    dry_run: bool = True
    grace_period: float = 900.0
    protected_tags: tuple[str, ...] = DEFAULT_PROTECTED
    max_tags_per_plan: int = Field(25, ge=1)
    max_repository_fraction: float = Field(0.5, gt=0, le=1)
    max_untags_per_hour: int = Field(200, ge=1)
    ci_untag_per_pipeline: int = Field(20, ge=0)
    default_lifetime: PatternLifetime = "merge_request"
    #: One note on a merge request once its plan is done (what was untagged, how to restore it), posted
    #: with the project's ``registry_token``; never ``gitlab.api_token``.
    mr_note: bool = False

    _grace = field_validator("grace_period", mode="before")(lambda cls, v: _duration(v))

    @field_validator("protected_tags")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for expr in value:
            try:
                re.compile(expr)
            except re.error as exc:
                raise ValueError(f"{expr!r} is not a valid regular expression: {exc}") from exc
        return value


class ProjectSettings(Policy):
    path: str
    webhook_secret: SecretStr
    #: The project's access token with the ``api`` scope and the Maintainer role: GitLab grants the registry
    #: ``delete`` to nothing less (``read_registry`` gives pull, ``write_registry`` push, silently).
    registry_token: SecretStr | None = None
    images: tuple[str, ...] = ("",)
    tags: tuple[TagPattern, ...] = ()

    _blank = field_validator("registry_token", mode="before")(lambda cls, v: _blank_is_none(v))

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        value = value.strip("/")
        if not value:
            raise ValueError("a project path such as group/app is required")
        return value

    def matches(self, project_path: str) -> bool:
        """Exact path, or ``group/*`` for every project below group."""
        if self.path.endswith("/*"):
            return fnmatch.fnmatchcase(project_path, self.path) or project_path.startswith(self.path[:-1])
        return project_path == self.path

    def repositories(self, project_path: str) -> tuple[str, ...] | None:
        """Registry repositories this project entry covers; None means any below the project path."""
        if "*" in self.images:
            return None
        base = project_path.lower()  # registry repository names are the project path in lower case
        return tuple(f"{base}/{image}" if image else base for image in self.images)


class Settings(_Frozen):
    gitlab: GitLabSettings = GitLabSettings()
    registry: RegistrySettings = RegistrySettings()
    storage: StorageSettings = StorageSettings()
    server: ServerSettings = ServerSettings()
    worker: WorkerSettings = WorkerSettings()
    defaults: Policy = Policy()
    projects: tuple[ProjectSettings, ...] = ()

    def project_for(self, project_path: str) -> ProjectSettings | None:
        """The configured entry for a GitLab project path: exact entries win over ``group/*`` ones."""
        exact = [p for p in self.projects if p.path == project_path]
        if exact:
            return exact[0]
        wildcard = [p for p in self.projects if p.matches(project_path)]
        return max(wildcard, key=lambda p: len(p.path)) if wildcard else None

    def api_token_for(self, project: ProjectSettings) -> str | None:
        """The token for GitLab API calls about ``project``: ``gitlab.api_token``, else the project's
        ``registry_token`` (SPEC 9, 11)."""
        token = self.gitlab.api_token or project.registry_token
        return token.get_secret_value() if token is not None else None


def _resolve(node: Any, path: str, environ: Mapping[str, str], errors: list[str], base: Path) -> Any:
    """Expand ``${VAR}`` (or ``${VAR:-default}``) in strings; turn ``key_file: F`` into ``key: <F's text>``."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.endswith("_file") and key != "_file":
                target = key[: -len("_file")]
                file_path = _resolve(value, sub, environ, errors, base)
                try:
                    secret_path = Path(str(file_path))
                    if not secret_path.is_absolute():
                        secret_path = base / secret_path
                    out[target] = secret_path.read_text().strip()
                except OSError as exc:
                    errors.append(f"{sub}: cannot read secret file {file_path!r}: {exc.strerror}")
                continue
            out[key] = _resolve(value, sub, environ, errors, base)
        return out
    if isinstance(node, list):
        return [_resolve(v, f"{path}[{i}]", environ, errors, base) for i, v in enumerate(node)]
    if isinstance(node, str):
        if path.endswith(".pattern"):
            return node  # tag patterns use ${CI_*} themselves: GitLab's variables, not ours

        def sub_var(match: re.Match[str]) -> str:
            name, fallback = match.group(1), match.group(2)
            if environ.get(name):
                return environ[name]
            if fallback is not None:
                return fallback
            if name not in environ:
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return environ[name]

        return _ENV_REF.sub(sub_var, node)
    return node


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def settings_from_dict(raw: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None,
                       base: Path | None = None) -> Settings:
    """Validate a config mapping (as read from YAML) into :class:`Settings`, or raise ConfigError."""
    environ = os.environ if environ is None else environ
    errors: list[str] = []
    data = _resolve(dict(raw or {}), "", environ, errors, base or Path.cwd())
    defaults = data.get("defaults") or {}
    if isinstance(defaults, dict) and isinstance(data.get("projects"), list):
        data["projects"] = [
            {**defaults, **p} if isinstance(p, dict) else p for p in data["projects"]
        ]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            errors.append(f"{_format_loc(tuple(err['loc']))}: {msg}")
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    return settings


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file named by ``path``, else ``$JANITOR_CONFIG``, else ``config/janitor.yaml``."""
    environ = os.environ if environ is None else environ
    chosen = Path(path or environ.get("JANITOR_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = chosen.read_text()
    except FileNotFoundError:
        raise ConfigError([
            f"{chosen}: config file not found; copy config/janitor.example.yaml there, "
            "or pass --config FILE / set JANITOR_CONFIG"
        ]) from None
    except OSError as exc:
        raise ConfigError([f"{chosen}: cannot read config file: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{chosen}: not valid YAML: {exc}"]) from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError([f"{chosen}: the top level must be a mapping of sections (gitlab, registry, ...)"])
    return settings_from_dict(raw, environ, base=chosen.parent)

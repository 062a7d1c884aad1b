"""Settings: load the YAML file once, resolve ``${VAR}`` and ``*_file`` secrets, validate it whole.

Owns the shape of the configuration (SPEC section 9) and the frozen objects the rest of the code reads.
Every problem is reported at once with its key path (``projects[0].tags[1].lifetime: ...``); callers
turn :class:`ConfigError` into exit code 2. Secrets are :class:`pydantic.SecretStr`, hidden in repr.
Must not open sockets, databases or files other than the config file and ``*_file`` secrets.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from daemon.domain.model import PatternLifetime, UntagMethod
from daemon.domain.names import is_loopback, is_namespace_path, is_project_path
from daemon.domain.patterns import Duration, format_duration, parse_duration, validate_pattern
from daemon.domain.policy import MIN_EVENT_RETENTION, MIN_PLAN_RETENTION
from daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/janitor.yaml"
DEFAULT_PROTECTED = ("latest", "main", "master", "stable", r"v?\d+(\.\d+)*")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> Duration:
    """A configured duration: text (``30s``, ``15m``, ``1h30m``) or a number of seconds, kept as written."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a duration; write it like 30s, 15m, 2h, 7d or 1h30m")
        return Duration(value, f"{int(value) if float(value).is_integer() else value}s")
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected a duration such as 30s, 15m, 2h, 7d or 1h30m")


def _kept_duration(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Parse a duration, check the field's bounds on its seconds, and keep the text it was written as."""
    if value is None:
        return handler(value)
    parsed = _duration(value)
    return Duration(handler(parsed), parsed.text)


def _kept_positive_duration(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    kept = _kept_duration(value, handler)
    if kept <= 0:
        raise ValueError(f"{kept.text!r} is no time at all; give a duration longer than 0s, e.g. 5s")
    return kept


#: A duration key: seconds (a float) that print as written (``daemon.domain.patterns.format_duration``).
DurationValue = Annotated[float, WrapValidator(_kept_duration)]
PositiveDuration = Annotated[float, WrapValidator(_kept_positive_duration)]


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


# A host name (DNS labels; '_' too, as container networks name services), as a URL's or ``server.bind``'s.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _shown(url: str) -> str:
    """``url`` as an error may repeat it: a password in it is masked."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def redact(url: str) -> str:
    """``url`` (a storage URL or libpq conninfo) with any password in it (``//user:password@``,
    ``password=...``) replaced by ``***``: what messages and logs print."""
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", r"\1***", _shown(url))


def _host_problem(host: str) -> str | None:
    """Why ``host`` (a URL's or ``server.bind``'s, IPv6 in brackets) names no host; None when it does."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return None
    if ":" in host:
        return f"{host!r} needs brackets around an IPv6 address ([::1])"
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        return f"{host!r} is not a host name or IP address"
    return None


def _url_problem(url: str, example: str) -> str | None:
    """Why ``url`` is no plain http(s) URL of a service; None when it is."""
    if any(ch.isspace() or ch == "\\" or not ch.isprintable() for ch in url):
        return "must be a plain URL (no user info, backslash or white space)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"is not a URL (its port must be a number from 1 to 65535), e.g. {example}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"is not an http(s) URL, e.g. {example}"
    if port == 0:
        return f"names port 0 (a port is a number from 1 to 65535), e.g. {example}"
    if "@" in parts.netloc:
        return ("must be a plain URL (no user info, backslash or white space): each credential has its own key"
                " (gitlab.api_token, a project's registry_token)")
    why = _host_problem(re.sub(r":[0-9]*$", "", parts.netloc))
    return None if why is None else f"names no valid host ({why}), e.g. {example}"


def _service_url(key: str, example: str) -> Callable[[Any, str], str]:
    """A field validator for the base URL of a service (``gitlab.url``, ``registry.url``)."""
    def check(cls: Any, value: str) -> str:
        why = _url_problem(value, example)
        if why is None and (urlsplit(value).query or urlsplit(value).fragment):
            why = f"must end at its path (no ?query or #fragment), e.g. {example}"
        if why is not None:
            raise ValueError(f"{_shown(value)!r} {why}")
        return value
    check.__name__ = f"_{key}_url"
    return check


def _realm_problem(url: str) -> str | None:
    """Why ``url`` cannot be a token service a registry credential is sent to; None when it can."""
    why = _url_problem(url, "https://gitlab.example.com/jwt/auth")
    if why is not None:
        return why
    if urlsplit(url).scheme == "http" and not is_loopback(urlsplit(url).hostname or ""):
        return "must use https (plain http only to a loopback address: 127.0.0.1, ::1, localhost)"
    return None


def _bind_problem(bind: str) -> str | None:
    """Why ``server.bind`` is no address gunicorn can listen on; None when it is."""
    example = "e.g. 127.0.0.1:8080, 0.0.0.0:8080, [::]:8080 or unix:/run/janitor.sock"
    if bind.startswith("unix:"):
        return None if bind[len("unix:"):].strip() else f"names no socket file, {example}"
    if bind.startswith("fd://"):
        return None if re.fullmatch(r"[0-9]+", bind[len("fd://"):]) else f"names no file descriptor, {example}"
    host, sep, port = bind.rpartition(":")
    if not sep or not port:
        return f"is not host:port, {example}"
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        return f"has port {port!r}; a port is a number from 1 to 65535, {example}"
    why = _host_problem(host) if host else None
    return None if why is None else f"is not host:port: its host {why}, {example}"


def _registry_host_problem(name: str) -> str | None:
    """Why a ``registry.hostnames`` entry is no ``host`` or ``host:port`` of image references."""
    host, port = name, None
    if ":" in name and not name.endswith("]"):
        host, _, port = name.rpartition(":")
    if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        return f"has port {port!r}; a port is a number from 1 to 65535"
    return _host_problem(host)


class GitLabSettings(_Frozen):
    url: str = "https://gitlab.example.com"
    #: For reconcile and branch lookups in every project (``read_api`` is enough); hooks install needs
    #: ``api`` and the Maintainer role. Writes never use it. Unset: each project's ``registry_token``.
    api_token: SecretStr | None = None
    #: The secret token of GitLab's system hook (Admin > System hooks), one for the whole instance: it
    #: authenticates deliveries sent with ``X-Gitlab-Event: System Hook`` for any configured project.
    system_hook_secret: SecretStr | None = None
    timeout: float = Field(10.0, gt=0)

    _blank = field_validator("api_token", "system_hook_secret", mode="before")(lambda cls, v: _blank_is_none(v))
    _url = field_validator("url")(_service_url("gitlab", "https://gitlab.example.com"))


class RegistrySettings(_Frozen):
    url: str = "http://127.0.0.1:5000"
    hostnames: tuple[str, ...] = ()
    untag_method: UntagMethod = "auto"
    requests_per_second: float = Field(10.0, ge=0)
    burst: int = Field(20, ge=1)
    #: Token services (URLs or origins) besides ``gitlab.url``'s host that may be sent a project's
    #: ``registry_token`` when the registry's challenge names them; https unless loopback.
    token_realms: tuple[str, ...] = ()

    _url = field_validator("url")(_service_url("registry", "https://registry.example.com"))

    @field_validator("hostnames")
    @classmethod
    def _hostnames(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            why = _registry_host_problem(name)
            if why is not None:
                raise ValueError(f"{name!r}: {why}; list hosts as image references name them, e.g."
                                 " registry.example.com or registry.example.com:5050")
        return value

    @field_validator("token_realms")
    @classmethod
    def _token_realms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for realm in value:
            why = _realm_problem(realm)
            if why is not None:
                raise ValueError(f"{_shown(realm)!r} {why}")
        return value

    @model_validator(mode="after")
    def _default_hostnames(self) -> RegistrySettings:
        if not self.hostnames:
            host = self.url.split("://", 1)[-1].split("/", 1)[0]
            object.__setattr__(self, "hostnames", (host,))
        return self


SQLITE_PREFIX = "sqlite:///"


def _sqlite_problem(url: str) -> str | None:
    path = url[len(SQLITE_PREFIX):] if url.startswith(SQLITE_PREFIX) else None
    if path is None or not path.strip() or path.endswith("/") or "\x00" in path:
        return ("names no database file: write sqlite:///relative/path.db (relative to the config file's"
                " folder) or sqlite:////absolute/path.db")
    return None


def _postgres_problem(url: str) -> str | None:
    """Why ``url`` is no libpq URL (``postgresql://user@host:5432/db?sslmode=verify-full``); None when it is."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "must not hold white space or control characters (percent-encode them)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number from 0 to 65535)
    except ValueError as exc:
        return f"is not a PostgreSQL URL ({exc}): write postgresql://user@host:5432/database"
    if parts.fragment:
        return "must not have a #fragment: write options as ?key=value (e.g. ?sslmode=verify-full)"
    if not parts.path.strip("/"):
        return "names no database: write postgresql://user@host:5432/database"
    for option in filter(None, parts.query.split("&")):
        key, sep, value = option.partition("=")
        if not sep or not key or not value:
            return f"option {option!r} is not key=value (e.g. sslmode=verify-full)"
    return None


#: The storage URL schemes (``scheme://...``) and the check of each: the one place a scheme is added.
STORAGE_SCHEMES: dict[str, Callable[[str], str | None]] = {
    "sqlite": _sqlite_problem, "postgresql": _postgres_problem, "postgres": _postgres_problem}


def _storage_problem(url: str) -> str | None:
    """Why ``storage.url`` names no store the janitor can open; None when it names one."""
    scheme, sep, _ = url.partition("://")
    check = STORAGE_SCHEMES.get(scheme) if sep else None
    if check is None:
        return (f"is not a storage URL the janitor knows: use {' or '.join(f'{s}://...' for s in STORAGE_SCHEMES)},"
                " e.g. sqlite:///data/janitor.db or postgresql://janitor@db.example.com:5432/janitor")
    return check(url)


def _beside(base: Path, path: str | os.PathLike[str]) -> Path:
    """A path from the config: as it is when absolute, else relative to ``base`` (the config file's folder)."""
    found = Path(path)
    return found if found.is_absolute() else base / found


def _at_least(least: float, why: str) -> Callable[[float], float]:
    def check(value: float) -> float:
        if value < least:
            raise ValueError(f"{format_duration(value)} is too short: give at least {format_duration(least)} ({why})")
        return value
    return check


class RetentionSettings(_Frozen):
    """How long the worker keeps what it no longer needs before pruning it (``daemon.store.retention``)."""

    #: Applied events (the raw deliveries in the inbox).
    events: DurationValue = Duration(7 * 86400, "7d")
    #: Finished plans with their audit rows and saved manifests (a restore needs them), events set aside as
    #: unusable, and push records whose tag is gone.
    plans: DurationValue = Duration(180 * 86400, "180d")

    _events = field_validator("events")(lambda cls, v: _at_least(
        MIN_EVENT_RETENTION, "a stored delivery is what recognises GitLab resending it")(v))
    _plans = field_validator("plans")(lambda cls, v: _at_least(
        MIN_PLAN_RETENTION, "the audit and the manifests restores put back are kept at least that long")(v))


class StorageSettings(_Frozen):
    #: ``sqlite:///relative/path.db`` is relative to the config file's folder (the current folder for
    #: settings that come from no file); ``sqlite:////absolute/path.db``; or PostgreSQL's
    #: ``postgresql://user@host:5432/database?sslmode=verify-full`` (libpq's options pass through).
    url: str = "sqlite:///data/janitor.db"
    #: PostgreSQL's password, usually as ``password_file`` (or ``${VAR}`` in the URL): never printed.
    password: SecretStr | None = None
    retention: RetentionSettings = RetentionSettings()

    _blank = field_validator("password", mode="before")(lambda cls, v: _blank_is_none(v))

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        why = _storage_problem(value)
        if why is not None:
            raise ValueError(f"{redact(value)!r} {why}")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> StorageSettings:
        if self.password is None:
            return self
        if not self.is_postgres:
            raise ValueError("password (or password_file) is for a PostgreSQL url; SQLite has none")
        if urlsplit(self.url).password is not None or "password=" in urlsplit(self.url).query:
            raise ValueError("the password is given twice: in url and as password (or password_file); keep one")
        return self

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(("postgresql://", "postgres://"))

    @property
    def shown_url(self) -> str:
        """``url`` as messages and logs may print it: a password in it masked."""
        return redact(self.url)

    @property
    def password_value(self) -> str | None:
        return None if self.password is None else self.password.get_secret_value()

    @property
    def sqlite_path(self) -> str:
        return self.url[len(SQLITE_PREFIX):]

    def relative_to(self, base: Path) -> StorageSettings:
        """This storage with a relative SQLite path resolved against ``base``."""
        if not self.url.startswith(SQLITE_PREFIX) or Path(self.sqlite_path).is_absolute():
            return self
        return self.model_copy(update={"url": SQLITE_PREFIX + str(_beside(base.resolve(), self.sqlite_path))})


class ServerSettings(_Frozen):
    #: ``host:port`` (``[ipv6]:port``; ``:port`` for every address), ``unix:/path`` or ``fd://N``.
    bind: str = "127.0.0.1:8080"
    admin_token: SecretStr | None = None
    registry_notification_token: SecretStr | None = None
    metrics_require_token: bool = False
    max_body_bytes: int = Field(25 * 1024 * 1024, ge=1)

    _blank = field_validator("admin_token", "registry_notification_token", mode="before")(
        lambda cls, v: _blank_is_none(v)
    )

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        why = _bind_problem(value)
        if why is not None:
            raise ValueError(f"{value!r} {why}")
        return value


class WorkerSettings(_Frozen):
    poll_interval: PositiveDuration = Duration(5, "5s")
    reconcile_interval: PositiveDuration = Duration(600, "10m")
    stuck_pipeline_after: PositiveDuration = Duration(86400, "1d")


class TagPattern(_Frozen):
    pattern: str
    lifetime: PatternLifetime | None = None
    ttl: DurationValue | None = None

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
    grace_period: DurationValue = Duration(900, "15m")
    protected_tags: tuple[str, ...] = DEFAULT_PROTECTED
    max_tags_per_plan: int = Field(25, ge=1)
    max_repository_fraction: float = Field(0.5, gt=0, le=1)
    max_untags_per_hour: int = Field(200, ge=1)
    ci_untag_per_pipeline: int = Field(20, ge=0)
    default_lifetime: PatternLifetime = "merge_request"
    #: One note on a merge request once its plan is done (what was untagged, how to restore it), posted
    #: with the project's ``registry_token``; never ``gitlab.api_token``.
    mr_note: bool = False

    @field_validator("protected_tags")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for expr in value:
            try:
                re.compile(expr)
            except re.error as exc:
                raise ValueError(f"{expr!r} is not a valid regular expression: {exc}") from exc
        return value


def _project_path(value: str) -> str:
    """A configured ``projects[].path``: a GitLab project path or ``group/*``, without outer slashes."""
    value = value.strip("/")
    if not value:
        raise ValueError("a project path such as group/app is required")
    if not (is_namespace_path(value[:-2]) if value.endswith("/*") else is_project_path(value)):
        raise ValueError(
            f"{value!r} is no GitLab project path (group/app, group/sub/app) nor a group wildcard (group/*):"
            " GitLab paths are letters, digits, '_', '-' and '.', no segment starts or ends with '-' or"
            " '.', holds '..' or ends in '.git' or '.atom'")
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

    _path = field_validator("path")(lambda cls, v: _project_path(v))

    @property
    def is_wildcard(self) -> bool:
        """``group/*``: every project below the group that no more specific entry owns."""
        return self.path.endswith("/*")

    @property
    def base(self) -> str:
        """The entry's project path, or for ``group/*`` its group's, in lower case as GitLab compares them."""
        return (self.path[:-2] if self.is_wildcard else self.path).lower()

    def matches(self, project_path: str) -> bool:
        """A valid GitLab project path that is this entry's own path (in any case), or for ``group/*`` is
        below the group. Which entry a path belongs to when several match: ``Settings.project_for``."""
        if not isinstance(project_path, str) or not is_project_path(project_path):
            return False
        path = project_path.lower()
        return path.startswith(self.base + "/") if self.is_wildcard else path == self.base

    def repositories(self, project_path: str) -> tuple[str, ...] | None:
        """Registry repositories this project entry covers; None means any below the project path."""
        if "*" in self.images:
            return None
        base = project_path.lower()  # registry repository names are the project path in lower case
        return tuple(f"{base}/{image}" if image else base for image in self.images)


class _ProjectIndex:
    """``Settings.project_for`` as lookups: the exact entries and the wildcards by their (lower-case) base,
    and every group that holds a configured entry."""

    #: The indexes of the last few ``projects`` tuples asked about, by ``id`` (each index holds its tuple, so
    #: the id is not reused while it is here).
    _made: dict[int, _ProjectIndex] = {}
    _KEPT = 16

    @classmethod
    def of(cls, projects: tuple[ProjectSettings, ...]) -> _ProjectIndex:
        index = cls._made.get(id(projects))
        if index is None or index.projects is not projects:
            if len(cls._made) >= cls._KEPT:
                cls._made.clear()
            index = cls._made[id(projects)] = cls(projects)
        return index

    def __init__(self, projects: tuple[ProjectSettings, ...]) -> None:
        self.projects = projects
        self.exact: dict[str, ProjectSettings] = {}
        self.wildcards: dict[str, ProjectSettings] = {}
        self.groups: set[str] = set()  # paths that are groups holding an entry: never a project's
        for entry in projects:
            base = entry.base
            if entry.is_wildcard:
                self.wildcards.setdefault(base, entry)
                self.groups.add(base)
            else:
                self.exact.setdefault(base, entry)
            parts = base.split("/")
            self.groups.update("/".join(parts[:n]) for n in range(1, len(parts)))

    def find(self, path: str) -> ProjectSettings | None:
        """The entry of ``path`` (a valid project path in lower case)."""
        found = self.exact.get(path)
        if found is not None:
            return found
        if path in self.groups:
            return None
        best: ProjectSettings | None = None
        parts = path.split("/")
        for n in range(len(parts) - 1, 0, -1):  # the longest group first
            above = "/".join(parts[:n])
            if above in self.exact:
                return None  # below an exact entry's path: its registry images, no project
            if best is None:
                best = self.wildcards.get(above)
        return best


class Settings(_Frozen):
    gitlab: GitLabSettings = GitLabSettings()
    registry: RegistrySettings = RegistrySettings()
    storage: StorageSettings = StorageSettings()
    server: ServerSettings = ServerSettings()
    worker: WorkerSettings = WorkerSettings()
    defaults: Policy = Policy()
    projects: tuple[ProjectSettings, ...] = ()

    def project_for(self, project_path: str) -> ProjectSettings | None:
        """The configured entry a GitLab project path belongs to (secrets, tokens and scope all follow it),
        or None. Paths compare in any case, as GitLab's do. An exact entry owns its path; else the longest
        ``group/*`` above it. None for a path GitLab could not hold (no valid project path), for one below an
        exact entry's path (GitLab holds no project inside a project: that path names the project's
        registry images), and for a group a more specific entry is configured in (it is no project).

        Asked for every webhook, so it looks the path and its groups up in an index of the entries
        (``_ProjectIndex``) instead of going through them all."""
        if not isinstance(project_path, str) or not is_project_path(project_path):
            return None
        return _ProjectIndex.of(self.projects).find(project_path.lower())

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
                    out[target] = _beside(base, str(file_path)).read_text().strip()
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
    """Validate a config mapping (as read from YAML) into :class:`Settings`, or raise ConfigError.

    ``base`` is the folder of the file it was read from: relative ``*_file`` secrets and a relative
    ``sqlite:///`` path are found there (in the current folder without one)."""
    environ = os.environ if environ is None else environ
    errors: list[str] = []
    data = _resolve(dict(raw or {}), "", environ, errors, base or Path.cwd())
    conflicts = _path_conflicts(_valid_paths(data.get("projects")))
    defaults = data.get("defaults") or {}
    inherited: list[set[str]] = []  # per project: the keys it takes from ``defaults``
    if isinstance(defaults, dict) and isinstance(data.get("projects"), list):
        inherited = [set(defaults) - set(p) if isinstance(p, dict) else set() for p in data["projects"]]
        data["projects"] = [
            {**defaults, **p} if isinstance(p, dict) else p for p in data["projects"]
        ]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if _inherited_error(loc, inherited):
                continue  # reported once, at defaults.<key>
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            errors.append(f"{_format_loc(loc)}: {msg}")
        raise ConfigError(errors + conflicts) from None
    if base is not None:
        settings = settings.model_copy(update={"storage": settings.storage.relative_to(base)})
    errors.extend(conflicts)
    errors.extend(_placeholder_problems(settings, raw or {}))
    if errors:
        raise ConfigError(errors)
    return settings


def _inherited_error(loc: tuple[Any, ...], inherited: list[set[str]]) -> bool:
    """Whether an error at ``projects[i].<key>...`` is about a value project i took from ``defaults``."""
    if len(loc) < 3 or loc[0] != "projects" or not isinstance(loc[1], int) or loc[1] >= len(inherited):
        return False
    return loc[2] in inherited[loc[1]]


def _valid_paths(projects: Any) -> dict[int, ProjectSettings]:
    """The ``projects`` entries whose own ``path`` is valid, by index, holding just that path: their conflicts
    are reported with the entries' other problems."""
    found: dict[int, ProjectSettings] = {}
    for i, entry in enumerate(projects if isinstance(projects, list) else []):
        path = entry.get("path") if isinstance(entry, dict) else None
        try:
            found[i] = ProjectSettings.model_construct(path=_project_path(path))  # type: ignore[arg-type,call-arg]
        except (AttributeError, ValueError):
            continue
    return found


def _path_conflicts(projects: dict[int, ProjectSettings]) -> list[str]:
    """Entries GitLab could not hold together, each reported once at the later entry: the same path twice
    (GitLab paths ignore case), or a path at or below an exact entry's project (GitLab holds no project or
    group inside a project; such a path names that project's registry images)."""
    problems: list[str] = []
    for j, later in projects.items():
        for i, earlier in ((i, e) for i, e in projects.items() if i < j):
            if earlier.base == later.base and earlier.is_wildcard == later.is_wildcard:
                same = "" if later.path == earlier.path else f" as {earlier.path!r} (GitLab paths ignore case)"
                problems.append(f"projects[{j}].path: {later.path!r} is already configured at projects[{i}]{same}:"
                                " keep one entry")
                break
            inside = [(o, n) for o, n in ((earlier, later), (later, earlier)) if _inside_project(o, n)]
            if inside:
                outer, inner = inside[0]
                inner_at, outer_at = (i, j) if inner is earlier else (j, i)
                problems.append(f"projects[{j}].path: {inner.path!r} (projects[{inner_at}]) lies inside the"
                                f" project {outer.path!r} (projects[{outer_at}]); GitLab holds no project or"
                                " group inside a project: such a path names that project's registry images (list"
                                " them in its 'images')")
                break
    return problems


def _inside_project(outer: ProjectSettings, inner: ProjectSettings) -> bool:
    return not outer.is_wildcard and (inner.base == outer.base or inner.base.startswith(outer.base + "/"))


#: Secrets that ship in this repository (``config/janitor.yaml``'s fallbacks, the README's walkthrough):
#: anyone who has read them knows them.
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "change_me")


def is_placeholder_secret(value: str) -> bool:
    return value.strip().lower().startswith(PLACEHOLDER_PREFIXES)


def loopback_bind(bind: str) -> bool:
    """Whether ``server.bind`` (``host:port``) listens on a loopback address only."""
    host, sep, _ = bind.rpartition(":")
    return bool(sep) and not bind.startswith(("unix:", "fd://")) and is_loopback(host.strip("[]"))


def _secrets(settings: Settings) -> list[tuple[str, SecretStr | None]]:
    found: list[tuple[str, SecretStr | None]] = [
        ("gitlab.api_token", settings.gitlab.api_token),
        ("gitlab.system_hook_secret", settings.gitlab.system_hook_secret),
        ("server.admin_token", settings.server.admin_token),
        ("server.registry_notification_token", settings.server.registry_notification_token),
    ]
    for i, project in enumerate(settings.projects):
        found += [(f"projects[{i}].webhook_secret", project.webhook_secret),
                  (f"projects[{i}].registry_token", project.registry_token)]
    return found


def _raw_at(raw: Any, key_path: str) -> tuple[Any, Any]:
    """(the mapping holding the last key, the value there) of ``a.b[0].c`` in the unresolved config."""
    parent: Any = None
    node: Any = raw
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key_path):
        parent = node
        if part.startswith("["):
            index = int(part[1:-1])
            node = node[index] if isinstance(node, list) and index < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return parent, node


def _placeholder_problems(settings: Settings, raw: Mapping[str, Any]) -> list[str]:
    """A secret this repository ships (``change-me...``) is refused once the server listens beyond
    loopback: the README's walkthrough and the demo listen on 127.0.0.1 and keep working."""
    bind = settings.server.bind
    if loopback_bind(bind):
        return []
    problems: list[str] = []
    for key, secret in _secrets(settings):
        if secret is None or not is_placeholder_secret(secret.get_secret_value()):
            continue
        name = key.rsplit(".", 1)[-1]
        parent, value = _raw_at(raw, key)
        variables = _ENV_REF.findall(value) if isinstance(value, str) else []
        if isinstance(parent, dict) and f"{name}_file" in parent:
            where = f"write a secret of your own into the file {name}_file names"
        elif variables:
            where = f"set {' or '.join(var for var, _ in variables)} to a secret of your own"
        else:
            where = "give it a secret of your own (through ${VAR} or a *_file)"
        problems.append(f"{key}: a placeholder secret (a change-me... value this repository ships) while"
                        f" server.bind {bind} is not a loopback address: {where} (python3 -c 'import secrets;"
                        " print(secrets.token_urlsafe(32))' makes one), or bind to 127.0.0.1")
    return problems


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

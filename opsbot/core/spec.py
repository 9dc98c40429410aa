"""DeploySpec: the Deploy form of the reference page as one validated model.

The TUI form, the Slack modal, the CLI flags, the spec file and the HTTP API all build a
DeploySpec through :func:`parse_spec` and get the same errors from the same code. This module
holds the rules a spec can be checked against on its own; rules that need the registry, the
flavors or the store live in :mod:`opsbot.core.admission`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import tomllib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

from opsbot.core.autostop import AutoStop, format_auto_stop
from opsbot.core.errors import FieldError, SpecInvalid

# \Z, not $: "$" also matches before a trailing newline, which would let "name\n" through.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
POOL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
DESCRIPTION_FORBIDDEN = set("!<>=&\"'")
RESERVED_ENV_PREFIXES = ("OPSBOT_",)
RESERVED_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES", "PATH", "HOME"})
DEFAULT_FLAVOR = "cpu.2u8g"
#: Model Source: My Models or My Subscriptions.
Source = Literal["mine", "subscribed"]
MAX_VERSIONS = 10
MAX_ENV = 100
MAX_ENV_VALUE = 4096
#: A variable's name: long enough for any real one, short enough to show and edit in every front.
MAX_ENV_NAME = 128
MAX_RULES = 10
MAX_RULE_VALUE = 256
HEADER_PATTERN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|PWD|TOKEN|SECRET|KEY|CREDENTIAL|PRIVATE", re.I)


def _whole_number(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; `instances = true` in a spec file is a mistake.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a number: give a whole number")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


def model_source(model: Any) -> Source:
    """The Model Source a model reference means when none is given: OWNER/NAME names a
    subscribed model (My Subscriptions), NAME one of the user's own (My Models). Every front
    (Slack's ``/deploy NAME MODEL VERSION``, the CLI's ``--model``, spec files, the API) leaves
    the source out and gets this rule."""
    return "subscribed" if isinstance(model, str) and "/" in model else "mine"


class ModelEntry(_Strict):
    """One model version of the service, with its share of traffic and its resources."""

    source: Source = Field(
        "mine",
        description='"mine" (My Models) or "subscribed" (My Subscriptions); left out, '
        '"subscribed" for a model named OWNER/NAME, else "mine"',
    )
    model: str = Field(
        ...,
        min_length=1,
        max_length=129,
        description='the model name; for a subscribed model, "OWNER/NAME"',
    )
    version: str = Field(
        ..., min_length=1, max_length=64, description='a version of the model, such as "1.0.0"'
    )
    traffic_ratio: int | None = Field(
        None,
        ge=0,
        le=100,
        description="a whole percentage from 0 to 100; the versions of a service sum to 100",
    )
    flavor: str = Field(
        DEFAULT_FLAVOR,
        min_length=1,
        max_length=64,
        description="a flavor id from `opsbot flavors`, such as cpu.2u8g",
    )
    instances: int = Field(
        1, ge=1, le=128, description="the number of instances (compute nodes), 1 to 128"
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables as NAME = value, NAME a shell name",
    )
    secret_env: tuple[str, ...] = Field(
        (),
        description="names in env whose values are secret: masked wherever shown, like the "
        "names and values that look secret",
    )

    @field_validator("traffic_ratio", "instances", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        return _whole_number(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_scalars(cls, value: Any) -> Any:
        # TOML and JSON give numbers and booleans; the process sees strings.
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(item, bool):
                    out[key] = "true" if item else "false"
                elif isinstance(item, int | float) and not (
                    isinstance(item, float) and not math.isfinite(item)
                ):
                    out[key] = str(item)
                else:
                    out[key] = item
            return out
        return value

    @field_validator("env")
    @classmethod
    def _env_rules(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} variables; remove {len(value) - MAX_ENV}")
        for name, item in value.items():
            if len(name) > MAX_ENV_NAME:
                raise ValueError(
                    f"the name {name[:24]}... is longer than {MAX_ENV_NAME} characters; "
                    "use a shorter name"
                )
            if not ENV_NAME_PATTERN.match(name):
                raise ValueError(
                    f"{name!r} is not a valid variable name: use letters, digits and _, "
                    "not starting with a digit"
                )
            if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"{name} is set by opsbot itself; choose another name")
            if len(item) > MAX_ENV_VALUE:
                raise ValueError(f"the value of {name} is longer than {MAX_ENV_VALUE} characters")
            if "\x00" in item:
                raise ValueError(f"the value of {name} contains a NUL character")
        return value

    @model_serializer(mode="wrap")
    def _leave_out_no_secrets(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Shown only when set, so a spec without marked secrets dumps as it always did (the
        # same snapshots, fingerprints and forms).
        out: dict[str, Any] = handler(self)
        if not self.secret_env:
            out.pop("secret_env", None)
        return out

    @model_validator(mode="after")
    def _secret_names_in_env(self) -> ModelEntry:
        unknown = [name for name in self.secret_env if name not in self.env]
        if unknown:
            raise ValueError(
                f"secret_env names {', '.join(unknown)}, not in env: list only variables set in env"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _source_from_reference(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source" not in data:
            return {**data, "source": model_source(data.get("model"))}
        return data

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str, info: ValidationInfo) -> str:
        parts = value.split("/")
        if len(parts) > 2 or not all(NAME_PATTERN.match(p) for p in parts):
            raise ValueError(
                f"{value!r} is not a model name: use NAME, or OWNER/NAME for a subscribed model"
            )
        if info.data.get("source") == "subscribed" and len(parts) == 1:
            raise ValueError(
                f'a subscribed model is named OWNER/NAME, e.g. "alice/{value}"; for your own '
                f"model {value}, set the source to mine (or leave it out)"
            )
        return value

    @field_validator("version", "flavor")
    @classmethod
    def _token(cls, value: str) -> str:
        if not TOKEN_PATTERN.match(value):
            raise ValueError(f"{value!r} may hold only letters, digits, '.', '_' and '-'")
        return value

    @property
    def key(self) -> tuple[str, str]:
        """What makes two entries the same version: the model and the version."""
        return (self.model, self.version)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """The compiled pattern. RE2 matches in time linear in the header's length, so no rule can
    stall the gateway's event loop (Python's ``re`` can take exponential time)."""
    return re2.compile(pattern, _RE2_OPTIONS)


def _re2_message(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


class RoutingRule(_Strict):
    """ "Header H equals (or matches) V -> version X": checked in order before the ratios."""

    header: str = Field(..., description="an HTTP header name, such as X-User-Group")
    equals: str | None = Field(
        None, max_length=MAX_RULE_VALUE, description="the exact header value that matches"
    )
    matches: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_RULE_VALUE,
        description="a regular expression the whole header value must match",
    )
    version: str = Field(..., min_length=1, description="the version that gets matching calls")
    model: str | None = Field(
        None, description="the model of that version, needed only when two models share it"
    )

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not HEADER_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an HTTP header name: use letters, digits and -")
        return value

    @field_validator("matches")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _regex(value)
            except re2.error as exc:
                raise ValueError(
                    f"{value!r} is not a regular expression opsbot can run: "
                    f"{_re2_message(exc)} (RE2 syntax: no backreferences or lookaround)"
                ) from None
        return value

    @model_validator(mode="after")
    def _one_test(self) -> RoutingRule:
        if (self.equals is None) == (self.matches is None):
            raise ValueError('give exactly one of "equals" and "matches"')
        return self

    def target(self, models: list[ModelEntry]) -> int | None:
        """The index of the model entry this rule sends calls to, if exactly one fits."""
        hits = [
            i
            for i, m in enumerate(models)
            if m.version == self.version and self.model in (None, m.model)
        ]
        return hits[0] if len(hits) == 1 else None

    def applies(self, value: str | None) -> bool:
        """Whether a call whose header H has this value goes to the rule's version."""
        if value is None:
            return False
        if self.equals is not None:
            return value == self.equals
        return _regex(self.matches or "").fullmatch(value) is not None


class DeploySpec(_Strict):
    """The Deploy form: basic information, resource pool and models, traffic limit."""

    name: str = Field(
        ...,
        description="1 to 64 letters, digits, '-' or '_', starting with a letter",
    )
    auto_stop: AutoStop = Field(
        default_factory=AutoStop,
        description='"1h", "2h", "4h", "6h", whole hours up to "24h", minutes like "90m", or "off"',
    )
    description: str = Field(
        "", max_length=100, description="at most 100 characters, none of ! < > = & \" '"
    )
    resource_pool: str = Field(
        "public", description='"public" or the name of a dedicated pool from the config'
    )
    models: list[ModelEntry] = Field(
        ...,
        min_length=1,
        max_length=MAX_VERSIONS,
        description=f"1 to {MAX_VERSIONS} model versions (more than one is a gated launch)",
    )
    traffic_limit: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="the most requests per second the service accepts, a whole number >= 1",
    )
    rules: list[RoutingRule] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description=f"up to {MAX_RULES} ordered routing rules, checked before the ratios",
    )

    @field_validator("traffic_limit", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        return _whole_number(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not a valid name: use 1 to 64 letters, digits, '-' or '_', "
                "starting with a letter"
            )
        return value

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        bad = sorted(set(value) & DESCRIPTION_FORBIDDEN)
        if bad:
            raise ValueError(f"remove the characters {' '.join(bad)}: they are not allowed")
        return value

    @field_validator("resource_pool")
    @classmethod
    def _pool(cls, value: str) -> str:
        if not POOL_PATTERN.match(value):
            raise ValueError(f"{value!r} is not a pool name: use 'public' or a dedicated pool")
        return value

    @model_validator(mode="after")
    def _versions(self) -> DeploySpec:
        object.__setattr__(self, "models", _lone_takes_all(self.models))
        errors = version_rule_errors(self.models, self.rules)
        if errors:
            raise _SpecRuleErrors(errors)
        return self

    @field_serializer("auto_stop")
    def _auto_stop_text(self, value: AutoStop) -> str:
        return format_auto_stop(value)

    @property
    def ratios(self) -> dict[tuple[str, str], int]:
        return {m.key: m.traffic_ratio or 0 for m in self.models}


def _lone_takes_all(models: list[ModelEntry]) -> list[ModelEntry]:
    """``models``, a lone version without a traffic ratio given all the traffic (100)."""
    if len(models) == 1 and models[0].traffic_ratio is None:
        return [models[0].model_copy(update={"traffic_ratio": 100})]
    return models


def version_rule_errors(models: list[ModelEntry], rules: list[RoutingRule]) -> list[FieldError]:
    """The rules across a service's versions (a lone one's ratio defaulted already, see
    :func:`_lone_takes_all`): a ratio for each of a gated launch's, the ratios summing to 100,
    each version once, each routing rule naming one version."""
    errors: list[FieldError] = []
    missing = [i for i, m in enumerate(models) if m.traffic_ratio is None]
    for i in missing:
        errors.append(
            FieldError(
                f"models[{i}].traffic_ratio",
                "set a traffic ratio for every version of a gated launch; they sum to 100",
            )
        )
    if not missing:
        total = sum(m.traffic_ratio or 0 for m in models)
        if total != 100:
            field = "models[0].traffic_ratio" if len(models) == 1 else "models"
            errors.append(
                FieldError(
                    field,
                    f"the traffic ratios sum to {total}%; make them sum to 100%",
                )
            )
    seen = Counter(m.key for m in models)
    for i, m in enumerate(models):
        if seen[m.key] > 1:
            errors.append(
                FieldError(
                    f"models[{i}].version",
                    f"{m.model} {m.version} is listed {seen[m.key]} times; "
                    "each version may appear once",
                )
            )
    for i, rule in enumerate(rules):
        if rule.target(models) is None:
            listed = ", ".join(dict.fromkeys(f"{m.model} {m.version}" for m in models))
            errors.append(
                FieldError(
                    f"rules[{i}].version",
                    f"{rule.version} is not one version of this service; "
                    f"choose one of: {listed} (add model = ... if two models share it)",
                )
            )
    return errors


class _SpecRuleErrors(ValueError):
    """Cross-field rule failures raised inside validation, each already bound to its field."""

    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


def parse_spec(data: Any) -> DeploySpec:
    """Validate anything (a dict from a form, a file, flags or JSON) into a DeploySpec.

    Raises SpecInvalid, and only SpecInvalid, listing every problem with its field.
    """
    if isinstance(data, DeploySpec):
        return data
    if not isinstance(data, dict):
        raise SpecInvalid(
            [FieldError("spec", f"expected a table of fields, got {type(data).__name__}")]
        )
    try:
        return DeploySpec.model_validate(data)
    except _SpecRuleErrors as exc:  # pragma: no cover - pydantic wraps it; kept for safety
        raise SpecInvalid(exc.errors) from None
    except ValidationError as exc:
        errors = _field_errors(exc)
        raise SpecInvalid(errors + _rules_across(data, errors)) from None


_VERSIONS = TypeAdapter(Annotated[list[ModelEntry], Field(min_length=1, max_length=MAX_VERSIONS)])
_RULES = TypeAdapter(Annotated[list[RoutingRule], Field(max_length=MAX_RULES)])


@dataclass(frozen=True)
class SpecParts:
    """What of a refused spec is valid on its own (None: that part is not): enough to check it
    against the world (registry, pools, flavors) and report those problems with the rest."""

    models: list[ModelEntry] | None
    rules: list[RoutingRule] | None
    resource_pool: str | None


def spec_parts(data: Any, errors: list[FieldError]) -> SpecParts | None:
    """The parts of ``data``, refused with ``errors``, that are valid each on its own; None
    when ``data`` is no table."""
    if not isinstance(data, dict):
        return None
    models: list[ModelEntry] | None = None
    rules: list[RoutingRule] | None = None
    with contextlib.suppress(ValidationError):
        models = _VERSIONS.validate_python(data.get("models"))
    with contextlib.suppress(ValidationError):
        rules = _RULES.validate_python(data.get("rules", []))
    if models is not None:
        models = _lone_takes_all(models)
    pool: str | None = None  # refused: its own error says so
    if not any(e.field == "resource_pool" for e in errors):
        pool = data.get("resource_pool", DeploySpec.model_fields["resource_pool"].default)
    return SpecParts(models, rules, pool)


def _rules_across(data: dict[str, Any], errors: list[FieldError]) -> list[FieldError]:
    """The rules across versions, for a spec refused on other fields: pydantic checks them only
    once every field is valid, and a user fixing a bad name should not learn of a bad ratio sum
    only on the next try. Checked when the versions and the rules are themselves valid (and
    not already, which is when their errors are among ``errors``)."""
    if any(e.field.startswith(("models", "rules")) for e in errors):
        return []
    parts = spec_parts(data, errors)
    if parts is None or parts.models is None or parts.rules is None:
        return []
    return version_rule_errors(parts.models, parts.rules)


def _field_errors(exc: ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for detail in exc.errors(include_url=False):
        ctx_error = (detail.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _SpecRuleErrors):
            out.extend(ctx_error.errors)
            continue
        loc = detail["loc"]
        if detail["type"] == "invalid_key":  # the last part is the bad key, not a field
            loc = loc[:-1]
        out.append(FieldError(_path(loc), _message(detail)))
    return out


def _path(loc: tuple[int | str, ...]) -> str:
    if "[key]" in loc:  # a key of a table that is not a string: the table is the field
        loc = loc[: loc.index("[key]") - 1]
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after[_from_text()]",) or part.startswith("function-"):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "spec"


def _hint(loc: tuple[int | str, ...]) -> str | None:
    """The description of the field an error location points at: it says what is expected."""
    model: type[BaseModel] | None = DeploySpec
    hint = None
    for part in loc:
        if model is None or not isinstance(part, str):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return hint
        hint = info.description
        model = _NESTED.get(part)
    return hint


_NESTED: dict[str, type[BaseModel]] = {"models": ModelEntry, "rules": RoutingRule}


def _message(detail: ErrorDetails) -> str:
    kind = detail["type"]
    loc = detail["loc"]
    if kind == "extra_forbidden":
        owner: type[BaseModel] = (
            ModelEntry
            if "models" in loc[:-1]
            else AutoStop
            if "auto_stop" in loc[:-1]
            else RoutingRule
            if "rules" in loc[:-1]
            else DeploySpec
        )
        known = ", ".join(owner.model_fields)
        return f"unknown field; the fields here are: {known}"
    if kind == "missing":
        hint = _hint(loc)
        return f"required: give {hint}" if hint else "required"
    if kind == "value_error":
        return str(detail["msg"]).removeprefix("Value error, ")
    hint = _hint(loc)
    got = detail.get("input")
    shown = repr(got) if isinstance(got, str | int | float | bool) else type(got).__name__
    base = str(detail["msg"]).rstrip(".")
    base = base[0].lower() + base[1:] if base else base
    return f"{base} (got {shown}); expected {hint}" if hint else f"{base} (got {shown})"


def spec_to_dict(spec: DeploySpec) -> dict[str, Any]:
    """The normalised spec with the field names of a spec file (auto_stop as "1h")."""
    return spec.model_dump(mode="json")


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON spec file into a dict, without validating it.

    Raises SpecInvalid with field "file" when the file cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecInvalid([FieldError("file", f"cannot read {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise SpecInvalid([FieldError("file", f"{path} is not UTF-8 text")]) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{")):
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecInvalid(
            [FieldError("file", f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecInvalid([FieldError("file", f"{path} is not valid TOML: {exc}")]) from None
    if not isinstance(data, dict):
        raise SpecInvalid([FieldError("file", f"{path} must hold one table (object) of fields")])
    return data


def looks_secret(name: str, value: str) -> bool:
    """Whether an environment variable looks like it holds a secret.

    By name (PASSWORD, TOKEN, SECRET, KEY, ...) or by value (20+ characters of high entropy).
    """
    if SECRET_NAME.search(name):
        return True
    if len(value) < 20 or " " in value:
        return False
    counts = Counter(value)
    entropy = -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())
    classes = sum(any(f(ch) for ch in value) for f in (str.islower, str.isupper, str.isdigit))
    return entropy >= 3.5 and classes >= 2


def spec_warnings(spec: DeploySpec) -> list[FieldError]:
    """Warnings that do not stop a deploy: environment values that look like secrets."""
    out = []
    for i, entry in enumerate(spec.models):
        for name, value in entry.env.items():
            if looks_secret(name, value):
                out.append(
                    FieldError(
                        f"models[{i}].env.{name}",
                        f"{name} looks like a secret: it will be masked when shown, but anyone "
                        "who can read the service's processes can read it; prefer a file mounted "
                        "with the model",
                    )
                )
    return out


def mask_value(name: str, value: str, secret: bool = False) -> str:
    """The value of an environment variable as it may be shown: secrets (marked ``secret``, or
    looking like one) masked."""
    if not (secret or looks_secret(name, value)):
        return value
    return "****" if len(value) <= 8 else value[:2] + "****" + value[-2:]


def masked_env(env: dict[str, str], secret_names: Iterable[str] = ()) -> dict[str, str]:
    marked = set(secret_names)
    return {name: mask_value(name, value, name in marked) for name, value in env.items()}


def masked_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as dumped to JSON (a service's, or a history snapshot's), env values masked: what
    every answer shows, whoever asks."""
    out = dict(spec)
    models = []
    for entry in spec.get("models", []):
        entry = dict(entry)
        entry["env"] = masked_env(entry.get("env") or {}, entry.get("secret_env") or ())
        models.append(entry)
    out["models"] = models
    return out

"""Job types: a name, a parameters and a result JSON Schema, options, and maybe a handler.

Two ways to declare one:

* from a typed function (``@app.job(...)``): the type hint of its first
  parameter (a pydantic model, TypedDict, dataclass, ``dict[str, X]``...)
  gives the parameters schema and its return hint the result schema; values
  are validated with pydantic, and the handler receives the validated object;
* from raw JSON Schema dicts (``app.register_job_type(...)``, as TopChef does):
  values are validated with ``jsonschema`` (Draft 2020-12) and stay plain JSON.

Both parameters and results are JSON objects.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import jsonschema  # type: ignore[import-untyped]
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from tether.jobs.exceptions import JobValidationError, UnknownJobType

#: Longest retry delay the exponential backoff gives, in seconds.
MAX_BACKOFF = 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Options of a job type.

    Attributes:
        max_attempts: starts allowed before the job fails for good (an int >= 1).
        backoff: seconds before the first retry; each further retry waits twice
            as long (capped at ``MAX_BACKOFF``); 0 retries at once.
        timeout: seconds one attempt may run, or None. Past it the attempt fails
            with ``deadline_exceeded`` (retried while attempts remain): an async
            handler is cancelled at once; a sync one is asked to stop
            (``ctx.cancelled``) and its job stays leased until its thread returns,
            but at most one lease (the worker's ``lease``) longer: then the
            attempt fails anyway and the thread, which Python cannot stop, is
            left running (holding its worker slot) while the job may run again.
        priority: default priority of submitted jobs (an int of 32 bits); higher
            runs first.
        queue: default queue of submitted jobs.
        scopes: scopes a caller needs to submit jobs of this type (under an App
            with auth), on top of those of the ``jobs.submit`` action. Reading and
            cancelling its jobs need only ``jobs.read`` and ``jobs.cancel``'s.
    """

    max_attempts: int = 3
    backoff: float = 1.0
    timeout: float | None = None
    priority: int = 0
    queue: str = "default"
    scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check the values.

        Raises:
            ValueError: ``max_attempts`` not an int >= 1, ``backoff`` not a number >= 0,
                ``timeout`` not a number > 0 (or None), ``priority`` not an int of
                32 bits, an empty ``queue``, ``scopes`` not names.
        """
        if not _is_int(self.max_attempts) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {self.max_attempts!r}")
        if not _is_number(self.backoff) or not 0 <= self.backoff < math.inf:
            raise ValueError(f"backoff must be a number of seconds >= 0, not {self.backoff!r}")
        if self.timeout is not None and (
            not _is_number(self.timeout) or not 0 < self.timeout < math.inf
        ):
            raise ValueError(
                f"timeout must be a number of seconds > 0 or None, not {self.timeout!r}"
            )
        if not _is_int(self.priority) or not -(2**31) <= self.priority < 2**31:
            raise ValueError(f"priority must be an int of 32 bits, not {self.priority!r}")
        if not isinstance(self.queue, str) or not self.queue:
            raise ValueError("queue must be a non-empty string")
        object.__setattr__(self, "scopes", scope_names(self.scopes))

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait before the next start after ``attempts`` failed starts."""
        if self.backoff == 0:
            return 0.0
        exponent = min(max(attempts - 1, 0), 30)
        return min(self.backoff * math.pow(2.0, exponent), MAX_BACKOFF)


def scope_names(scopes: Iterable[str]) -> tuple[str, ...]:
    """``scopes`` (a list, tuple or set of scope names) as a tuple.

    Raises:
        ValueError: ``scopes`` is a plain string (it would be taken letter by letter:
            write ``["admin"]``), or holds something other than non-empty strings.
    """
    if isinstance(scopes, str | bytes):
        raise ValueError(f"scopes must be a sequence of scope names, not a string: [{scopes!r}]")
    names = tuple(scopes)
    if not all(isinstance(x, str) and x for x in names):
        raise ValueError(f"scopes must be non-empty strings, not {names!r}")
    return names


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _errors_from_pydantic(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:5]
    )


class _Schema:
    """One side (parameters or result) of a job type: its JSON Schema and its validator."""

    def __init__(self, schema: dict[str, Any], adapter: TypeAdapter[Any] | None) -> None:
        self.schema = schema
        self.adapter = adapter
        self._validator = None if adapter is not None else jsonschema.Draft202012Validator(schema)

    def errors(self, value: Any) -> list[dict[str, Any]]:
        """The problems of ``value`` (empty when valid)."""
        try:
            self.load(value)
        except JobValidationError as exc:
            return exc.errors
        return []

    def load(self, value: Any) -> Any:
        """Validate ``value``; return the typed object (typed) or the value itself (raw).

        Raises:
            JobValidationError: ``value`` does not match (message without a prefix).
        """
        if self.adapter is not None:
            try:
                return self.adapter.validate_json(to_json(value))
            except PydanticSerializationError as exc:
                errors = [{"loc": [], "msg": f"not JSON-serialisable: {exc}", "type": "json"}]
                raise JobValidationError(_summary(errors), errors) from None
            except ValidationError as exc:
                errors = _errors_from_pydantic(exc)
                raise JobValidationError(_summary(errors), errors) from None
        assert self._validator is not None
        found = sorted(self._validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if found:
            errors = [
                {"loc": list(e.absolute_path), "msg": e.message, "type": str(e.validator)}
                for e in found
            ]
            raise JobValidationError(_summary(errors), errors)
        return value

    def dump(self, value: Any) -> dict[str, Any]:
        """Validate ``value`` and return it as a JSON object (defaults filled when typed).

        Raises:
            JobValidationError: ``value`` does not match, or is not a JSON object.
        """
        loaded = self.load(value)
        if self.adapter is not None:
            try:
                loaded = self.adapter.dump_python(loaded, mode="json", by_alias=True)
            except (ValueError, TypeError) as exc:  # pragma: no cover - validated above
                raise JobValidationError(str(exc), []) from None
        if not isinstance(loaded, dict):
            errors = [{"loc": [], "msg": "must be a JSON object", "type": "object_type"}]
            raise JobValidationError(_summary(errors), errors)
        return loaded


@dataclass(eq=False)
class JobType:
    """A registered job type.

    Attributes:
        name: its name (letters, digits, ``_``, ``-``, ``.``).
        doc: its description.
        options: its :class:`JobOptions`.
        handler: the function run by workers, or None (a raw type run by
            workers elsewhere, or a ``Worker`` subclass).
        takes_context: the handler takes a second parameter, the ``JobContext``.
    """

    name: str
    doc: str
    options: JobOptions
    parameters: _Schema = field(repr=False)
    result: _Schema = field(repr=False)
    handler: Handler | None = field(default=None, repr=False)
    takes_context: bool = False

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """The JSON Schema (2020-12) of the parameters."""
        return self.parameters.schema

    @property
    def result_schema(self) -> dict[str, Any]:
        """The JSON Schema (2020-12) of the result."""
        return self.result.schema

    @property
    def is_async(self) -> bool:
        """True when the handler is a coroutine function."""
        return self.handler is not None and inspect.iscoroutinefunction(self.handler)

    def validate_parameters(self, parameters: Any) -> dict[str, Any]:
        """Return ``parameters`` as they are stored: validated, as a JSON object
        (with defaults filled in for typed job types).

        Raises:
            JobValidationError: they do not match the parameters schema.
        """
        try:
            return self.parameters.dump(parameters)
        except JobValidationError as exc:
            raise JobValidationError(
                f"invalid parameters for job type {self.name!r}: {exc.message}", exc.details
            ) from None

    def load_parameters(self, parameters: Any) -> Any:
        """Return what the handler receives: the typed object, or the raw JSON object.

        Raises:
            JobValidationError: they do not match the parameters schema.
        """
        try:
            return self.parameters.load(parameters)
        except JobValidationError as exc:
            raise JobValidationError(
                f"invalid parameters for job type {self.name!r}: {exc.message}", exc.details
            ) from None

    def validate_result(self, result: Any) -> dict[str, Any]:
        """Return ``result`` (a handler's return value or a worker's JSON) as the JSON
        object stored.

        Raises:
            JobValidationError: it does not match the result schema.
        """
        try:
            return self.result.dump(result)
        except JobValidationError as exc:
            raise JobValidationError(
                f"invalid result for job type {self.name!r}: {exc.message}", exc.details
            ) from None

    def describe(self) -> dict[str, Any]:
        """The description published in ``GET /rpc`` and ``GET /jobs/types``."""
        return {
            "name": self.name,
            "doc": self.doc,
            "parameters": self.parameters_schema,
            "result": self.result_schema,
            "max_attempts": self.options.max_attempts,
            "backoff": self.options.backoff,
            "timeout": self.options.timeout,
            "priority": self.options.priority,
            "queue": self.options.queue,
            "scopes": list(self.options.scopes),
        }


def _check_object_schema(schema: dict[str, Any], what: str) -> None:
    kind = schema.get("type")
    if kind is not None and kind != "object" and not (isinstance(kind, list) and "object" in kind):
        raise TypeError(f"{what} must describe a JSON object, not {kind!r}")


def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


class JobTypeRegistry:
    """The job types of an App, by name."""

    def __init__(self) -> None:
        """Start empty."""
        self._types: dict[str, JobType] = {}

    def __len__(self) -> int:
        """How many job types are registered."""
        return len(self._types)

    def __iter__(self) -> Iterator[JobType]:
        """The job types in registration order."""
        return iter(list(self._types.values()))

    def __contains__(self, name: object) -> bool:
        """True when a job type of that name is registered."""
        return name in self._types

    @property
    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._types)

    def get(self, name: str) -> JobType:
        """Return the job type ``name``.

        Raises:
            UnknownJobType: none of that name (``not_found``), naming the known ones.
        """
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(self._types) or "none"
            raise UnknownJobType(
                f"no job type {name!r}; job types: {known}", {"type": name}
            ) from None

    def _add(self, job_type: JobType) -> JobType:
        if not _NAME.match(job_type.name):
            raise ValueError(
                f"job type name {job_type.name!r}: use letters, digits, '_', '-' or '.'"
            )
        if job_type.name in self._types:
            raise ValueError(f"a job type named {job_type.name!r} is registered already")
        self._types[job_type.name] = job_type
        return job_type

    def register(
        self,
        name: str,
        *,
        parameters_schema: Mapping[str, Any],
        result_schema: Mapping[str, Any],
        handler: Handler | None = None,
        doc: str = "",
        options: JobOptions | None = None,
    ) -> JobType:
        """Register a job type from raw JSON Schema dicts (Draft 2020-12).

        Args:
            name: the job type's name.
            parameters_schema, result_schema: JSON Schemas of JSON objects.
            handler: optional function ``(parameters: dict[, ctx]) -> dict`` workers run.
            doc: description.
            options: :class:`JobOptions` (default: the defaults).

        Returns:
            The registered :class:`JobType`.

        Raises:
            ValueError: bad name, name taken.
            jsonschema.SchemaError: a schema is not a valid JSON Schema.
            TypeError: a schema describes something other than an object.
        """
        schemas = []
        sides = (("parameters_schema", parameters_schema), ("result_schema", result_schema))
        for what, raw in sides:
            schema = dict(raw)
            jsonschema.Draft202012Validator.check_schema(schema)
            _check_object_schema(schema, what)
            schemas.append(_Schema(schema, None))
        return self._add(
            JobType(
                name=name,
                doc=doc,
                options=options or JobOptions(),
                parameters=schemas[0],
                result=schemas[1],
                handler=handler,
                takes_context=_takes_context(handler, name) if handler is not None else False,
            )
        )

    def register_function(
        self, fn: Handler, *, name: str | None = None, options: JobOptions | None = None
    ) -> JobType:
        """Register a typed handler ``fn(parameters: P[, ctx]) -> R`` as a job type.

        Args:
            fn: sync or async function; the hint of its first parameter gives the
                parameters schema, its return hint the result schema.
            name: the job type's name (default: the function's name).
            options: :class:`JobOptions`.

        Returns:
            The registered :class:`JobType`.

        Raises:
            TypeError: missing hints, or hints that are not JSON objects.
            ValueError: bad name, name taken.
        """
        job_name = name or fn.__name__
        where = f"job {job_name!r} ({getattr(fn, '__qualname__', fn)!r})"
        try:
            hints = get_type_hints(fn, include_extras=True)
        except NameError as exc:
            raise TypeError(f"{where}: cannot resolve a type hint: {exc}") from None
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not params or params[0].name not in hints:
            raise TypeError(f"{where}: the first parameter needs a type hint (its parameters)")
        if "return" not in hints:
            raise TypeError(f"{where}: needs a return type hint (its result)")
        sides = []
        for what, hint in (("parameters", hints[params[0].name]), ("result", hints["return"])):
            try:
                adapter = _adapter(hint)
                schema = adapter.json_schema(
                    mode="validation" if what == "parameters" else "serialization", by_alias=True
                )
            except Exception as exc:
                raise TypeError(f"{where}: {what} type {hint!r}: {exc}") from None
            _check_object_schema(schema, f"{where}: the {what} type")
            if "type" not in schema and "$ref" not in schema and "properties" not in schema:
                raise TypeError(f"{where}: the {what} type must be a JSON object type")
            sides.append(_Schema(schema, adapter))
        return self._add(
            JobType(
                name=job_name,
                doc=inspect.getdoc(fn) or "",
                options=options or JobOptions(),
                parameters=sides[0],
                result=sides[1],
                handler=fn,
                takes_context=_takes_context(fn, job_name),
            )
        )

    def describe(self) -> list[dict[str, Any]]:
        """Every job type's description."""
        return [t.describe() for t in self._types.values()]


def _takes_context(fn: Handler, name: str) -> bool:
    """True when ``fn`` takes a second positional parameter (the JobContext).

    Raises:
        TypeError: it takes none or more than two.
    """
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) not in (1, 2):
        raise TypeError(
            f"job {name!r}: a handler takes (parameters) or (parameters, ctx), "
            f"not {len(params)} parameters"
        )
    return len(params) == 2

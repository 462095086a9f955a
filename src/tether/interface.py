"""Service interfaces: ``@service``, ``@method`` and the specs built from them.

A service interface is a class whose public, fully type-hinted methods are
the service's methods. Introspection (done once per interface, lazily, so
forward references may be defined after the class) builds a
:class:`ServiceSpec` with one :class:`MethodSpec` per method: the bound
signature, a pydantic model that validates the arguments, a pydantic
``TypeAdapter`` for the result, and their JSON Schemas.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

import pydantic
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticSerializationError

from tether.codec import Codec, pack, unpack
from tether.errors import RemoteError, ServiceError, StatusCode, TetherError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Binary data travels as base64 in JSON; unknown arguments are refused.
_CONFIG = ConfigDict(
    extra="forbid",
    ser_json_bytes="base64",
    val_json_bytes="base64",
    protected_namespaces=(),
    arbitrary_types_allowed=False,
)
_SERVICE_ATTR = "__tether_service__"
_METHOD_ATTR = "__tether_method__"
_SPEC_ATTR = "__tether_spec__"
# Enum members are looked up through a descriptor in Python 3.11: the hot path
# compares with a module constant instead.
_JSON = Codec.JSON


@dataclass(frozen=True)
class MethodOptions:
    """Per-method options set with :func:`method`.

    Attributes:
        idempotent: the method may run twice for one call without harm, so a
            client may retry it after a failure that happened after sending.
        timeout: the longest the method may run, in seconds; caps the
            caller's deadline. None means the caller's deadline alone.
        name: the wire name, when it differs from the Python name.
        errors: ServiceError subclasses the method may raise.
        scopes: scopes a caller must hold (all of them) when auth is on.
    """

    idempotent: bool = False
    timeout: float | None = None
    name: str | None = None
    errors: tuple[type[ServiceError], ...] = ()
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _ServiceOptions:
    name: str
    version: str
    errors: tuple[type[ServiceError], ...]
    scopes: tuple[str, ...] = ()


def method(
    *,
    idempotent: bool = False,
    timeout: float | None = None,
    name: str | None = None,
    errors: Sequence[type[ServiceError]] = (),
    scopes: Sequence[str] = (),
) -> Callable[[F], F]:
    """Set options on a method of a service interface.

    Args:
        idempotent: safe to retry after it may have run (see :class:`MethodOptions`).
        timeout: the method's own limit in seconds, or None.
        name: the wire name, default the Python name.
        errors: ServiceError subclasses the method declares.
        scopes: scopes required to call it (on top of the service's), when
            the App runs with auth.

    Returns:
        A decorator that returns the function unchanged but for a marker.

    Raises:
        ValueError: ``timeout`` is not a positive number of seconds, or
            ``name`` is not letters, digits, ``_`` or ``-`` (it is a segment
            of ``/rpc/{service}/{method}`` and of NATS subjects).
    """
    if timeout is not None and not timeout > 0:  # NaN too
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    if name is not None:
        _check_wire_name("method", name)

    def decorate(fn: F) -> F:
        setattr(
            fn, _METHOD_ATTR, MethodOptions(idempotent, timeout, name, tuple(errors), tuple(scopes))
        )
        return fn

    return decorate


def service(
    name: str | None = None,
    *,
    version: str = "1",
    errors: Sequence[type[ServiceError]] = (),
    scopes: Sequence[str] = (),
) -> Callable[[type[T]], type[T]]:
    """Declare a class as a service interface.

    Args:
        name: the service's wire name; default the class name in lower case.
        version: a free-form version string published in descriptions.
        errors: ServiceError subclasses any method of the service may raise.
        scopes: scopes required to call any of its methods, when the App
            runs with auth.

    Returns:
        A class decorator. The class is returned unchanged but for a marker;
        its spec is built on first use by :func:`service_spec`.

    Raises:
        ValueError: when the decorator is applied, if the service name (given
            or derived) is not letters, digits, ``_`` or ``-``.
    """

    def decorate(cls: type[T]) -> type[T]:
        svc_name = name or cls.__name__.lower()
        _check_wire_name("service", svc_name)
        setattr(
            cls, _SERVICE_ATTR, _ServiceOptions(svc_name, version, tuple(errors), tuple(scopes))
        )
        return cls

    return decorate


def _check_wire_name(kind: str, name: str) -> None:
    """Refuse a service or method name that cannot be one segment of a URL path or
    NATS subject.

    Raises:
        ValueError: ``name`` is empty or holds anything but letters, digits, '_' or '-'.
    """
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{kind} name {name!r} must be letters, digits, '_' or '-'")


@dataclass
class MethodSpec:
    """Everything Tether knows of one method of a service.

    Built by :func:`service_spec`; read by the server, the clients, the
    descriptions and the OpenAPI generator.
    """

    service: str
    name: str
    attr: str
    doc: str
    options: MethodOptions
    signature: inspect.Signature
    params_model: type[BaseModel]
    result_type: Any
    result_adapter: TypeAdapter[Any]
    errors: tuple[type[ServiceError], ...]
    _fields: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    scopes: frozenset[str] = frozenset()

    @property
    def qualified_name(self) -> str:
        """``service.method``, as dynamic calls and the CLI name it."""
        return f"{self.service}.{self.name}"

    def __repr__(self) -> str:
        return f"<MethodSpec {self.qualified_name}{self.signature}>"

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Bind a Python call's arguments to parameter names.

        Returns:
            The arguments given, by name (defaults are applied by the server).

        Raises:
            TypeError: missing, surplus or unknown arguments, as Python would.
        """
        bound = self.signature.bind(None, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(self.signature.parameters)), None)
        return arguments

    def decode_arguments(self, body: bytes, codec: Codec) -> dict[str, Any]:
        """Validate a request body into keyword arguments for the method.

        An empty body means no arguments. Defaults of the signature fill the
        arguments not given.

        Raises:
            TetherError: ``invalid_argument`` for a malformed body, an unknown
                or missing argument, or a value of the wrong type; ``details``
                lists pydantic's errors (``loc``, ``msg``, ``type``).
        """
        validator = self.params_model.__pydantic_validator__
        try:
            if codec is _JSON:
                model = validator.validate_json(body or b"{}")
            else:
                data = unpack(body) if body else {}
                if not isinstance(data, dict):
                    raise TetherError(
                        "the body must be a map of arguments by name",
                        code=StatusCode.INVALID_ARGUMENT,
                    )
                model = validator.validate_python(data)
        except ValidationError as exc:
            raise _invalid_arguments(self, exc) from None
        values = model.__dict__
        return {param: values[fld] for fld, param in self._fields}

    def validate_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validate arguments given as Python values (the ``python`` codec, in-process).

        The same checks as :meth:`decode_arguments`, without an encoding: a
        value that already has its declared type is passed on as it is, as a
        plain Python call would.

        Raises:
            TetherError: ``invalid_argument``, as :meth:`decode_arguments`.
        """
        try:
            model = self.params_model.__pydantic_validator__.validate_python(arguments)
        except ValidationError as exc:
            raise _invalid_arguments(self, exc) from None
        values = model.__dict__
        return {param: values[fld] for fld, param in self._fields}

    def encode_result(self, value: Any, codec: Codec) -> bytes:
        """Encode a return value as the declared result type.

        A value of another shape that validates into the declared type (a
        dict for a model, say) is converted first.

        Raises:
            TetherError: ``internal`` when the value does not fit the declared
                result type: the implementation broke its interface.
        """
        try:
            if codec is _JSON:  # _dump inline: the common case
                return self.result_adapter.serializer.to_json(
                    value, by_alias=True, warnings="error"
                )
            return self._dump(value, codec)
        except (PydanticSerializationError, TypeError, ValueError):
            pass
        try:
            return self._dump(self.result_adapter.validator.validate_python(value), codec)
        except (ValidationError, PydanticSerializationError, TypeError) as exc:
            raise self._bad_result(exc) from None

    def _bad_result(self, exc: Exception) -> TetherError:
        return TetherError(
            f"{self.qualified_name} returned a value that does not match its declared "
            f"result type: {exc}",
            code=StatusCode.INTERNAL,
        )

    def _dump(self, value: Any, codec: Codec) -> bytes:
        serializer = self.result_adapter.serializer
        if codec is _JSON:
            return serializer.to_json(value, by_alias=True, warnings="error")
        return pack(serializer.to_python(value, by_alias=True, warnings="error"))

    def decode_result(self, body: bytes, codec: Codec) -> Any:
        """Decode and validate a result body into the declared type.

        Raises:
            RemoteError: ``data_loss`` when the body is not a valid result
                (a server that does not keep to the same interface).
        """
        validator = self.result_adapter.validator
        try:
            if codec is _JSON:
                return validator.validate_json(body)
            return validator.validate_python(unpack(body))
        except (ValidationError, TetherError) as exc:
            raise self._lost_result(exc) from None

    def _lost_result(self, exc: Exception) -> RemoteError:
        # A RemoteError: the remote side answered something unusable, as for
        # DeadlineExceeded and Unavailable, which the client detects too.
        return RemoteError(
            f"{self.qualified_name}: the server's result does not match the declared "
            f"type (is it serving another version of the interface?): {exc}",
            code=StatusCode.DATA_LOSS,
        )

    def dump_result(self, value: Any) -> Any:
        """The ``python`` codec's :meth:`encode_result`: plain Python data, not bytes.

        The value is dumped as the declared result type in pydantic's python
        mode (models become dicts, lists are new lists), so what reaches the
        caller through :meth:`load_result` is a copy, never the
        implementation's own objects. A value that has no JSON form either
        (an arbitrary object under ``Any``) is refused, as over JSON.

        Raises:
            TetherError: ``internal``, as :meth:`encode_result`.
        """
        serializer = self.result_adapter.serializer
        try:
            return serializer.to_python(
                value, by_alias=True, warnings="error", fallback=_unknown_type
            )
        except (PydanticSerializationError, TypeError, ValueError):
            pass
        try:
            return serializer.to_python(
                self.result_adapter.validator.validate_python(value),
                by_alias=True,
                warnings="error",
                fallback=_unknown_type,
            )
        except (ValidationError, PydanticSerializationError, TypeError) as exc:
            raise self._bad_result(exc) from None

    def load_result(self, data: Any) -> Any:
        """The ``python`` codec's :meth:`decode_result`: validate :meth:`dump_result`'s data.

        Raises:
            RemoteError: ``data_loss``, as :meth:`decode_result`.
        """
        try:
            return self.result_adapter.validator.validate_python(data)
        except ValidationError as exc:
            raise self._lost_result(exc) from None

    def parameters_schema(self) -> dict[str, Any]:
        """The JSON Schema (2020-12) of the request body."""
        return self.params_model.model_json_schema(by_alias=True)

    def result_schema(self) -> dict[str, Any]:
        """The JSON Schema (2020-12) of the result."""
        return self.result_adapter.json_schema(mode="serialization", by_alias=True)


@dataclass
class ServiceSpec:
    """A service: its name, version, documentation and methods by wire name."""

    name: str
    version: str
    doc: str
    interface: type
    methods: dict[str, MethodSpec]
    errors: tuple[type[ServiceError], ...]

    def __repr__(self) -> str:
        return f"<ServiceSpec {self.name} v{self.version} methods={sorted(self.methods)}>"

    def method(self, name: str) -> MethodSpec:
        """Return a method by wire name.

        Raises:
            TetherError: ``unimplemented`` naming the known methods.
        """
        try:
            return self.methods[name]
        except KeyError:
            known = ", ".join(sorted(self.methods)) or "none"
            raise TetherError(
                f"service {self.name!r} has no method {name!r}; its methods: {known}",
                code=StatusCode.UNIMPLEMENTED,
                http_status=404,
            ) from None

    def describe(self) -> dict[str, Any]:
        """The service's description as ``GET /rpc`` publishes it."""
        return {
            "name": self.name,
            "version": self.version,
            "doc": self.doc,
            "errors": [_describe_error(e) for e in self.errors],
            "methods": [describe_method(m) for m in self.methods.values()],
        }


def describe_method(spec: MethodSpec) -> dict[str, Any]:
    """A method's description: name, doc, options, errors and JSON Schemas."""
    return {
        "name": spec.name,
        "doc": spec.doc,
        "idempotent": spec.options.idempotent,
        "timeout": spec.options.timeout,
        "scopes": sorted(spec.scopes),
        "errors": [_describe_error(e) for e in spec.errors],
        "parameters": spec.parameters_schema(),
        "result": spec.result_schema(),
    }


def _describe_error(cls: type[ServiceError]) -> dict[str, Any]:
    return {"type": cls.error_name, "code": cls.code.value, "doc": inspect.getdoc(cls) or ""}


def _unknown_type(value: Any) -> Any:
    """The python codec's fallback for a value pydantic cannot serialize (an object
    under ``Any``): refused as JSON refuses it, never handed over by reference."""
    raise TypeError(f"Unable to serialize unknown type: {type(value)!r}")


def _invalid_arguments(spec: MethodSpec, exc: ValidationError) -> TetherError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if errors and errors[0]["type"] == "json_invalid":
        return TetherError(
            f"malformed JSON body: {errors[0]['msg']}", code=StatusCode.INVALID_ARGUMENT
        )
    if errors and errors[0]["type"] in ("model_type", "model_attributes_type"):
        return TetherError(
            "the body must be an object of arguments by name", code=StatusCode.INVALID_ARGUMENT
        )
    summary = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]
    )
    return TetherError(
        f"invalid arguments for {spec.qualified_name}: {summary}",
        [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors],
        code=StatusCode.INVALID_ARGUMENT,
    )


def is_service(cls: object) -> bool:
    """True when ``cls`` is a class declared with :func:`service`."""
    return isinstance(cls, type) and _SERVICE_ATTR in cls.__dict__


def interfaces_of(obj: object) -> list[type]:
    """The service interfaces an implementation (instance or class) implements.

    Walks the method resolution order; an implementation may implement several.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    return [base for base in cls.__mro__ if is_service(base)]


def service_spec(interface: type) -> ServiceSpec:
    """Return the spec of a service interface, building it on first use.

    Raises:
        TypeError: ``interface`` is not declared with :func:`service`, or a
            public method lacks type hints, takes ``*args``/``**kwargs`` or
            positional-only parameters.
    """
    cached = interface.__dict__.get(_SPEC_ATTR)
    if cached is not None:
        assert isinstance(cached, ServiceSpec)
        return cached
    if not is_service(interface):
        raise TypeError(
            f"{interface!r} is not a service interface; decorate it with @tether.service(...)"
        )
    opts: _ServiceOptions = interface.__dict__[_SERVICE_ATTR]
    methods: dict[str, MethodSpec] = {}
    for attr, fn in _public_functions(interface):
        spec = _build_method(interface, opts, attr, fn)
        if spec.name in methods:
            raise TypeError(f"service {opts.name!r} has two methods named {spec.name!r}")
        methods[spec.name] = spec
    built = ServiceSpec(
        name=opts.name,
        version=opts.version,
        doc=inspect.getdoc(interface) or "",
        interface=interface,
        methods=methods,
        errors=opts.errors,
    )
    setattr(interface, _SPEC_ATTR, built)
    return built


def _public_functions(interface: type) -> list[tuple[str, Callable[..., Any]]]:
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(interface.__mro__[:-1]):  # object's own methods are not services
        for attr, value in vars(klass).items():
            if attr.startswith("_") or isinstance(value, staticmethod | classmethod | property):
                continue
            if inspect.isfunction(value):
                found[attr] = value
    return list(found.items())


def _build_method(
    interface: type, opts: _ServiceOptions, attr: str, fn: Callable[..., Any]
) -> MethodSpec:
    options: MethodOptions = getattr(fn, _METHOD_ATTR, MethodOptions())
    where = f"{interface.__qualname__}.{attr}"
    try:
        hints = get_type_hints(fn, include_extras=True)
    except NameError as exc:
        raise TypeError(f"{where}: cannot resolve a type hint: {exc}") from None
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if not params or params[0].name in hints:
        raise TypeError(f"{where}: a service method takes 'self' first")
    fields: dict[str, Any] = {}
    names: list[tuple[str, str]] = []
    for param in params[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(
                f"{where}: parameter {param.name!r} is {param.kind.description}; service "
                "methods take named parameters only"
            )
        if param.name not in hints:
            raise TypeError(
                f"{where}: parameter {param.name!r} has no type hint; add one, or make the "
                "method private with a leading underscore"
            )
        default = ... if param.default is param.empty else param.default
        # Prefixed field names keep parameters such as 'json' or 'model_x' clear
        # of BaseModel's own attributes; the alias is the wire name.
        fld = f"p_{param.name}"
        fields[fld] = (hints[param.name], pydantic.Field(default, alias=param.name))
        names.append((fld, param.name))
    if "return" not in hints:
        raise TypeError(f"{where}: no return type hint; add one (-> None if it returns nothing)")
    wire_name = options.name or attr
    model_name = "".join(p.capitalize() for p in f"{opts.name}_{wire_name}".split("_")) + "Params"
    params_model = create_model(model_name, __config__=_CONFIG, **fields)
    result_type = hints["return"]
    return MethodSpec(
        service=opts.name,
        name=wire_name,
        attr=attr,
        doc=inspect.getdoc(fn) or "",
        options=options,
        signature=signature,
        params_model=params_model,
        result_type=result_type,
        result_adapter=_result_adapter(result_type),
        errors=tuple(dict.fromkeys(opts.errors + options.errors)),
        _fields=tuple(names),
        scopes=frozenset(opts.scopes + options.scopes),
    )


def _result_adapter(result_type: Any) -> TypeAdapter[Any]:
    try:
        return TypeAdapter(result_type, config=_CONFIG)
    except pydantic.PydanticUserError:
        # Models, dataclasses and TypedDicts carry their own config.
        return TypeAdapter(result_type)

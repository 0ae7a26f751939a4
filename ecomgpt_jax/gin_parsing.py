"""Gin files and bindings parsed with one-line errors that say what and where.

    parse_gin(files, bindings, search_paths, error, example, finalize)

Beyond gin's own parse: a missing file or include, a syntax error, an unknown
configurable or parameter are reported with their file and line (or the `--gin.NAME`
flag they came from) and a "did you mean"; a macro that no binding references (set
on the command line or in the user's gin file: a typo gin would silently accept), a
reference to a macro nothing sets, and
(with finalize) macros left at %gin.REQUIRED are errors, pointing at the gin file whose
header documents them.

How: gin's own parser first reads every file, include and binding without binding
anything (`_ScanDelegate`), then gin parses them for real, one at a time, so each error
has a place. This reads a few private parts of gin 0.5.0 (`_CONFIG`, `_REGISTRY`,
`_FILE_READERS`, `_LOCATION_PREFIXES`; requirements.txt pins it): tests/test_gin_parsing.py
covers each one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import logging
import os
import pathlib
import re
import tokenize
import typing
from collections.abc import Mapping

import gin
from gin import config_parser, resource_reader

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin_configs"


def _quiet_gin_package_lookups(record) -> bool:
    # gin looks every include up as a Python package resource too and logs each miss
    # at ERROR ("Path not found: models/tiny_bloom.gin") before finding the file.
    return not (record.filename == "resource_reader.py" and "Path not found" in record.msg)


def _safe_package_lookup(exists):
    def safe(path: str) -> bool:
        try:
            return exists(path)
        except TypeError:  # the folder is a namespace package: no __init__.py, no file
            return False

    return safe


def _fix_gin_package_lookup() -> None:
    """Makes gin's package-resource lookup answer "not here" instead of raising.

    gin 0.5.0 also looks every gin path up as a package resource (folder = package),
    and for a plain folder that Python can import as a namespace package (gin_configs/
    from the repository root, a models/ folder in the working directory) that lookup
    raises TypeError: a missing file ends in a trace, and an include found only under
    a later search path is never reached.
    """
    readers = gin.config._FILE_READERS
    for i, (reader, exists) in enumerate(readers):
        if exists is resource_reader.system_path_file_exists:
            readers[i] = (reader, _safe_package_lookup(exists))


class _GinProblem(Exception):
    """What is wrong with the gin config and where, as one line."""


class _Name(typing.NamedTuple):
    """A reference (`@Name`) or macro (`%NAME`) as the scan sees it: only its name."""

    kind: str
    name: str


class _ScanDelegate(config_parser.ParserDelegate):
    """Lets gin's own parser read a file without touching gin's registry or config."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Name("@", scoped_configurable_name)

    def macro(self, macro_name):
        return _Name("%", macro_name)


@dataclasses.dataclass
class _Sources:
    """What the scan of the gin files and bindings found, for the messages.

    headers: shown path -> the file's leading comment block.
    required: macro -> (shown path, line) of its last `NAME = %gin.REQUIRED`.
    uses: macro -> where a binding first references it (`%NAME`).
    sets: macro -> where it is first set (`NAME = ...`).
    user_sets: the same for gin files outside the repository's gin_configs/ (those are
      tested; a macro one of them sets may be meant for a file included after it).
    configurables: configurable name (without scope or module) -> where a binding first
      names it (`Name.param = ...` or `@Name`).
    """

    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    required: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    uses: dict[str, str] = dataclasses.field(default_factory=dict)
    sets: dict[str, str] = dataclasses.field(default_factory=dict)
    user_sets: dict[str, str] = dataclasses.field(default_factory=dict)
    configurables: dict[str, str] = dataclasses.field(default_factory=dict)


# Macros earlier versions read, which nothing reads now: a gin file still setting one would
# otherwise be accepted and silently train another model.
RETIRED_MACROS = {
    "MODEL_PRESET": "each gin_configs/models/*.gin file now binds ModelConfig itself; "
    "include the model's file instead",
    "MODEL_OVERRIDES": "bind the fields after the model file instead, e.g. "
    "ModelConfig.dtype = 'bfloat16' (--gin.ModelConfig.dtype=\"'bfloat16'\"); with "
    "INIT_FROM_HF or INIT_FROM_CHECKPOINT only the run settings (dtypes, remat_policy, "
    "scan_layers, attention_impl) apply, and eval takes DTYPE and MODEL_OVERRIDES_EVAL",
}


def _show(path: str) -> str:
    """`path` relative to the working directory when inside it (shorter messages)."""
    if os.path.isabs(path) and not os.path.relpath(path).startswith(".."):
        return os.path.relpath(path)
    return path


def _search_dirs() -> list[str]:
    return list(dict.fromkeys(gin.config._LOCATION_PREFIXES))


def _find_gin_file(path: str):
    """(reader, path) as gin's parse_config_file will find `path`, or None."""
    for prefix in [""] if os.path.isabs(path) else _search_dirs():
        full = os.path.join(prefix, path)
        for reader, exists in gin.config._FILE_READERS:
            if exists(full):
                return reader, full
    return None


def _not_found(path: str) -> str:
    if os.path.isabs(path):
        return "file not found"
    searched = dict.fromkeys(os.path.abspath(prefix or ".") for prefix in _search_dirs())
    return f"file not found (searched: {', '.join(searched)})"


def _unclosed_bracket(text: str) -> tuple[str, int] | None:
    """The innermost bracket still open where the text ends, and its line."""
    opened = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.OP and token.string in ("(", "[", "{"):
                opened.append((token.string, token.start[0]))
            elif token.type == tokenize.OP and token.string in (")", "]", "}") and opened:
                opened.pop()
    except tokenize.TokenError:
        return opened[-1] if opened else None
    return None


def _syntax_message(e: SyntaxError, hint: str) -> str:
    # gin wraps ast.literal_eval's error, whose first line names an ast node, not the input.
    lines = [line.strip() for line in str(e.msg).splitlines()]
    lines = [line for line in lines if line and not line.startswith("malformed node or string")]
    text = "; ".join(lines).rstrip(".") or "syntax error"
    if text.startswith(("Unable to parse value", "Failed to parse token")):
        text += f" ({hint})"
    return text


def _statements(text: str, where, hint: str) -> list:
    """gin's parse of `text`; a syntax error -> _GinProblem at where(line number)."""
    try:
        return list(config_parser.ConfigParser(text, _ScanDelegate()))
    except SyntaxError as e:
        raise _GinProblem(f"{where(e.lineno)}: {_syntax_message(e, hint)}") from None
    except tokenize.TokenError as e:
        bracket = _unclosed_bracket(text)
        if bracket:
            raise _GinProblem(f"{where(bracket[1])}: {bracket[0]!r} is never closed") from None
        raise _GinProblem(f"{where(e.args[1][0])}: {e.args[0]}") from None
    except (ValueError, TypeError) as e:  # a malformed key (`a.b.c.d = 1`), `{[1]: 2}`
        raise _GinProblem(f"{where(None)}: {str(e).strip().splitlines()[0]}") from None


def _walk(value):
    """`value` and everything nested in it (lists, tuples, dicts, sets)."""
    yield value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(key)
            yield from _walk(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _walk(item)


def _record(statements, where, sources: _Sources) -> dict[str, str]:
    """Notes macro references and REQUIRED macros; returns the macros bound -> where
    (first)."""
    bound: dict[str, str] = {}
    for statement in statements:
        if not isinstance(statement, config_parser.BindingStatement):
            continue
        line = statement.location.line_num
        for item in _walk(statement.value):
            if isinstance(item, _Name) and item.kind == "%":
                sources.uses.setdefault(item.name, where(line))
            if isinstance(item, _Name) and item.kind == "@":
                configurable = item.name.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
                sources.configurables.setdefault(configurable, where(line))
        if statement.arg_name:
            configurable = statement.selector.rsplit(".", 1)[-1]
            sources.configurables.setdefault(configurable, where(line))
        else:
            name = "/".join(filter(None, (statement.scope, statement.selector)))
            bound.setdefault(name, where(line))
            sources.sets.setdefault(name, where(line))
            if statement.value in (_Name("%", "gin.REQUIRED"), _Name("%", "REQUIRED")):
                sources.required[name] = (where(None), line)
    return bound


def _scan_file(path: str, where: str, sources: _Sources, stack: tuple[str, ...] = ()) -> None:
    """Checks that `path` and its includes exist and parse, before gin binds anything."""
    found = _find_gin_file(path)
    if found is None:
        raise _GinProblem(f"{where}: {_not_found(path)}")
    reader, full = found
    shown = _show(full)
    if os.path.abspath(full) in stack:
        cycle = " -> ".join(_show(p) for p in (*stack, os.path.abspath(full)))
        raise _GinProblem(f"{where}: the include never ends ({cycle})")
    try:
        with reader(full) as f:
            text = f.read()
        text = text.decode("utf-8") if isinstance(text, bytes) else text
    except (OSError, UnicodeDecodeError) as e:
        raise _GinProblem(f"{shown}: cannot read it ({e})") from None
    header = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        header.append(line)
    sources.headers[shown] = "\n".join(header)

    def at(line):
        return shown if line is None else f"{shown}, line {line}"

    statements = _statements(text, at, "strings need quotes")
    for statement in statements:
        if isinstance(statement, config_parser.IncludeStatement):
            include = f"{at(statement.location.line_num)}: include {statement.filename!r}"
            _scan_file(statement.filename, include, sources, (*stack, os.path.abspath(full)))
    bound = _record(statements, at, sources)
    if not pathlib.Path(full).resolve().is_relative_to(REPO_GIN_DIR):
        for name, where_set in bound.items():
            sources.user_sets.setdefault(name, where_set)


def _binding_flag(binding: str) -> str:
    """The command-line flag a binding came from (`--gin.NAME`)."""
    name, equals, _ = binding.partition("=")
    return f"--gin.{name.strip()}" if equals else f"--gin_bindings={binding!r}"


def _scan_binding(binding: str, sources: _Sources) -> list[str]:
    """Checks that a command-line binding parses; returns the macros it binds."""
    flag = _binding_flag(binding)
    value = binding.partition("=")[2].strip()
    hint = f"strings need quotes, e.g. {flag}=\"'{value}'\""
    statements = _statements(binding, lambda line: flag, hint)
    # One binding per flag: an import would run a module's code at parse time, an
    # include skips this pre-scan, and a second statement (a value with a newline) would
    # be blamed on this flag. Imports and includes belong in gin files.
    if len(statements) != 1 or not isinstance(statements[0], config_parser.BindingStatement):
        kinds = ", ".join(type(st).__name__.removesuffix("Statement").lower() for st in statements)
        raise _GinProblem(
            f"{flag}: a command-line binding must be exactly one `name = value` (got: "
            f"{kinds or 'nothing'}); put imports and includes in a gin file"
        )
    return list(_record(statements, lambda line: flag, sources))


_LOCATION = re.compile(r'\n  In (?:file "(?P<file>.*)",|bindings string) line (?P<line>\d+)')


def _close_match(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, sorted(set(candidates) - {word}), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _suggestion(what: str) -> str:
    """A "did you mean" for an unknown configurable or parameter in gin's message."""
    match = re.match(r"No configurable matching (?:reference )?'@?([\w./]+)", what)
    if match:
        names = {selector.rsplit(".", 1)[-1] for selector, _ in gin.config._REGISTRY.items()}
        return _close_match(match.group(1).rsplit(".", 1)[-1], names)
    match = re.match(r"Configurable '(.+)' doesn't have a parameter named '(.+)'", what)
    if match:
        try:
            wrapped = gin.config._REGISTRY.get_match(match.group(1)).wrapped
            return _close_match(match.group(2), inspect.signature(wrapped).parameters)
        except (AttributeError, TypeError, ValueError):
            return ""
    return ""


def _gin_call(fn, *args, where: str | None) -> None:
    """fn(*args); gin's error -> _GinProblem at the innermost file and line it names."""
    try:
        fn(*args)
    except (OSError, ValueError, TypeError, ImportError, SyntaxError, tokenize.TokenError) as e:
        text = str(e).strip()
        what = text.splitlines()[0].rstrip(".") if text else type(e).__name__
        located = _LOCATION.search(text)
        if located and located.group("file"):
            where = f"{_show(located.group('file'))}, line {located.group('line')}"
        prefix = f"{where}: " if where else ""
        raise _GinProblem(f"{prefix}{what}{_suggestion(what)}") from None


def _macro_uses() -> tuple[dict[str, list[str]], set[str]]:
    """(macro -> the bindings referencing it, macros bound), from gin's parsed config."""
    used, bound = {}, set()
    for (scope, selector), params in gin.config._CONFIG.items():
        is_macro = selector == "gin.macro"  # `NAME = value` binds gin.macro in scope NAME
        if is_macro:
            bound.add(scope)
        for param, value in params.items():
            short = f"{scope}{'/' if scope else ''}{selector.rsplit('.', 1)[-1]}.{param}"
            key = scope if is_macro else short
            for item in _walk(value):
                if (
                    isinstance(item, gin.config.ConfigurableReference)
                    and item.configurable.wrapped is gin.config.macro
                ):
                    used.setdefault("/".join(item.scopes), []).append(key)
    return used, bound


def _is_required(value) -> bool:
    return (
        isinstance(value, gin.config.ConfigurableReference)
        and value.configurable.wrapped is gin.config._retrieve_constant
        and "/".join(value.scopes) == "gin.REQUIRED"
    )


def _documented_in(name: str, sources: _Sources, first: str | None = None) -> str | None:
    """The gin file whose header comment mentions macro `name`: `first` if it does,
    else the first one read."""
    for shown in dict.fromkeys([first, *sources.headers]):
        if shown and re.search(rf"\b{re.escape(name)}\b", sources.headers.get(shown, "")):
            return shown
    return None


def _check_retired(sources: _Sources) -> None:
    """A retired macro set or used anywhere (scoped or not), before gin reports what
    it no longer has (e.g. `ModelSource.preset = %MODEL_PRESET` in an old eval.gin)."""
    for name, where in [*sources.sets.items(), *sources.uses.items()]:
        short = name.rsplit("/", 1)[-1]
        if short in RETIRED_MACROS:
            raise _GinProblem(f"{where}: macro {short} is retired: {RETIRED_MACROS[short]}")


def _check_macros(cli: dict[str, str], sources: _Sources, required: bool) -> None:
    """Macros set on the command line or in the user's gin files that nothing references,
    references to unset macros and (if `required`) macros left at %gin.REQUIRED: gin
    accepts the first silently (a typo: the setting meant is left at its default) and
    reports the others with the whole config attached, or not before finalize."""
    used, bound = _macro_uses()

    def check_used(macros: Mapping[str, str]) -> None:
        for name, where in macros.items():
            # scope/NAME counts as used by %NAME: gin reads it where %NAME is in that scope.
            if name not in used and name.rsplit("/", 1)[-1] not in used:
                raise _GinProblem(
                    f"{where}: macro {name} is not used by any binding{_close_match(name, used)}"
                )

    check_used(cli)
    unscoped = {name.rsplit("/", 1)[-1] for name in bound}
    for name, keys in used.items():
        if name not in bound and name not in unscoped:  # scope/NAME serves %NAME in scope
            doc = _documented_in(name, sources)
            hint = f" (see the header of {doc})" if doc else _close_match(name, bound)
            where = sources.uses.get(name, keys[0])
            raise _GinProblem(f"{where}: macro {name} is not set but {keys[0]} uses it{hint}")
    # After the unset ones: a binding that reads a misspelt %NAME leaves NAME unused.
    check_used({n: w for n, w in sources.user_sets.items() if n not in cli})
    if not required:
        return
    unset = sorted(n for n in bound if _is_required(gin.config._CONFIG[(n, "gin.macro")]["value"]))
    if not unset:
        return
    # The header of the file that set %gin.REQUIRED explains the macro, if any does.
    docs = [_documented_in(n, sources, sources.required.get(n, ("",))[0]) for n in unset]
    if all(docs):
        hint = f"see the header of {', '.join(dict.fromkeys(docs))}"
    else:
        places = [sources.required[n] for n in unset if n in sources.required]
        places = "; ".join(f"{f}, line {n}" for f, n in places)
        hint = f"set to %gin.REQUIRED in {places}" if places else "see its gin files"
    names = f"macro {unset[0]} is" if len(unset) == 1 else f"macros {', '.join(unset)} are"
    raise _GinProblem(f"{names} REQUIRED ({hint})")


def parse_gin(
    files,
    bindings,
    search_paths,
    error: type[Exception],
    example: str,
    finalize: bool = False,
    foreign: Mapping[str, str] | None = None,
) -> None:
    """Parses gin files and bindings; any problem raises `error` with one line.

    The line says what is wrong and where: the file and line, or the --gin.NAME flag.
    Beyond gin's own checks, a macro that no binding references (a typo gin would
    silently accept) is an error, and so is a referenced macro never set.

    Args:
      files: gin files, applied in order.
      bindings: "NAME = VALUE" strings, applied after the files.
      search_paths: extra folders for gin files and their includes; with the
        repository's gin_configs/ (and the working directory), the only ones searched:
        folders added to gin by other means are dropped.
      error: the entry point's user-error class.
      example: a gin file to name when none was given.
      finalize: lock the config; this also reports unset REQUIRED macros now, as one
        line, instead of later from deep inside the job.
      foreign: configurable name -> why this entry point does not take it (another entry
        point's settings). Checked on the files' text, not on gin's registry: a process
        that ran the other entry point (a notebook, the tests) has them registered too.
    """
    logging.getLogger().addFilter(_quiet_gin_package_lookups)  # gin logs via the root logger
    _fix_gin_package_lookup()
    gin.clear_config()
    # This call's folders only: gin's add_config_file_search_path keeps every folder
    # ever added, so an earlier call's --gin_search_paths would still find includes.
    folders = [*search_paths, str(REPO_GIN_DIR), str(REPO_GIN_DIR.parent)]
    gin.config._LOCATION_PREFIXES[:] = ["", *dict.fromkeys(folders)]
    if not files:
        raise error(f"pass at least one --gin_file (e.g. {example})")
    sources = _Sources()
    try:
        # gin's parser alone first (nothing bound yet): missing files and syntax errors
        # with their file and line, and what the macro checks need to know.
        for path in files:
            _scan_file(path, path, sources)
        cli = {}
        for binding in bindings:
            for name in _scan_binding(binding, sources):
                cli.setdefault(name, _binding_flag(binding))
        _check_retired(sources)
        for name, where in sources.configurables.items():
            if name in (foreign or {}):
                raise _GinProblem(f"{where}: {name} {foreign[name]}")
        for path in files:
            _gin_call(gin.parse_config_file, path, where=path)
        for binding in bindings:
            _gin_call(gin.parse_config, binding, where=_binding_flag(binding))
        _check_macros(cli, sources, required=finalize)
        if finalize:
            _gin_call(gin.finalize, where=None)
    except _GinProblem as e:
        raise error(f"gin config: {e}".replace("\n", " ")) from None

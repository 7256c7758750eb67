"""Translates a simple message template into one DuckDB expression that renders it exactly as
`action_sinks.templates.render_message` would, so a proposal pass renders a whole rule's candidates in SQL.

"Simple" means literal text, `[[ name ]]` and `[% if name %]…[% else %]…[% endif %]` over plain names; any
other template (filters, attributes, loops) is not translated and its candidates are rendered in Python. A
value is rendered in SQL only when its text is known to equal Python's `str()` of the value the Python path
would see (strings, integers, booleans, null, doubles); a candidate with any other value, a reason that is not
a plain JSON object, or a variable it lacks gets the expression's "renderable" flag false and goes the
Python way, which also words its error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jinja2 import nodes

from action_sinks.templates import _ENV, _HTML_ENV

# the characters Python's str.strip() removes (single_line strips the subject), listed because finding them
# among all 1.1M code points cost every process a fifth of a second (a test checks the list)
PYTHON_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
PYTHON_WHITESPACE += "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACE_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in PYTHON_WHITESPACE) + "]"  # as an RE2 class
_ALIASES = {"first_name": "contact_first_name", "last_name": "contact_last_name"}
_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER"}
_INTEGER_TYPES |= {"UBIGINT", "UHUGEINT"}
# a double's DuckDB text equals Python's repr up to here; beyond, a JSON integer literal may be read as a
# double by DuckDB but as an exact int by Python
_DOUBLE_LIMIT = 9.0e15


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _parts(body: list[nodes.Node]) -> list | None:
    parts: list = []
    for node in body:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    parts.append(("text", child.data))
                elif isinstance(child, nodes.Name) and child.ctx == "load":
                    parts.append(("var", child.name))
                else:
                    return None
        elif isinstance(node, nodes.If) and isinstance(node.test, nodes.Name) and not node.elif_:
            then, otherwise = _parts(node.body), _parts(node.else_)
            if then is None or otherwise is None:
                return None
            parts.append(("if", node.test.name, then, otherwise))
        else:
            return None
    return parts


def parse(source: str, html: bool = False) -> list | None:
    """The template as parts, or None when it is not simple (or does not even parse)."""
    try:
        tree = (_HTML_ENV if html else _ENV).parse(source or "")
    except Exception:  # noqa: BLE001  (a broken template is the Python path's to report)
        return None
    return _parts(tree.body)


def reason_object(reason: str = "reason") -> str:
    """SQL: is the reason a JSON object SQL reads as Python's json.loads does? Only a plain object both readers
    agree on is read in SQL (no duplicate keys, no \\u escapes, no control characters)."""
    # a CASE, not AND: SQL does not stop at the first false operand, and the JSON functions raise on non-JSON
    return (
        f"(case when coalesce({reason}, '') = '' or contains({reason}, '\\u') "
        f"or regexp_matches({reason}, '[\\x00-\\x1f]') or not json_valid({reason}) then false "
        f"when json_type({reason}) <> 'OBJECT' then false "
        f"else len(json_keys({reason})) = len(list_distinct(json_keys({reason}))) end)"
    )


def _names(parts: list) -> set[str]:
    names: set[str] = set()
    for part in parts:
        if part[0] == "var":
            names.add(part[1])
        elif part[0] == "if":
            names |= {part[1]} | _names(part[2]) | _names(part[3])
    return names


@dataclass(frozen=True)
class Rendered:
    subject: str  # SQL expression, the subject as single_line leaves it
    body: str  # SQL expression
    renderable: str  # SQL boolean: true when both expressions equal the Python rendering


class Variables:
    """The template variables of a pass's rules as columns computed once per row, resolved as
    template_variables() does: the reason's key first, then the first_name/last_name aliases, then the
    candidate's column (never `reason` itself). `layers()` are the select lists that compute them, each over
    the one before (the reason is read as JSON once per variable, not once per use)."""

    def __init__(self, columns: Mapping[str, str], reason: str = "reason") -> None:
        self.columns = columns
        self.reason = reason
        self.names: dict[str, int] = {}

    def _index(self, name: str) -> int:
        return self.names.setdefault(name, len(self.names))

    def text(self, name: str) -> str:
        """SQL: the variable's text as Python's str() gives it, null when SQL cannot say."""
        return f'"_t{self._index(name)}"'

    def truth(self, name: str) -> str:
        """SQL: the variable's truth as Python's bool() gives it, null when SQL cannot say."""
        return f'"_b{self._index(name)}"'

    def json_text(self, name: str) -> str:
        """SQL: the reason key's string, null when it has none (or not a string)."""
        index = self._index(name)
        return f"""(case when "_k{index}" = 'VARCHAR' then "_e{index}" ->> '$' end)"""

    reason_ok = '"_reason_ok"'
    reason_object = '"_reason_object"'

    def internal(self) -> list[str]:
        """The helper columns `layers()` add."""
        names = ["_reason_object", "_reason_ok"] + ([] if self.names else ["_no_variables", "_no_texts"])
        if self.names and self.columns.get(self.reason, "").upper() == "VARCHAR":
            names += ["_kinds", "_values"]
        for index in self.names.values():
            names += [f"_k{index}", f"_e{index}", f"_t{index}", f"_b{index}"]
        return names

    def layers(self) -> list[str]:
        has_reason = self.columns.get(self.reason, "").upper() == "VARCHAR"
        reason = self.reason
        first = (
            f"{reason_object(reason)} as _reason_object, "
            f"(coalesce({reason}, '') = '' or {reason_object(reason)}) as _reason_ok"
            if has_reason
            else "false as _reason_object, true as _reason_ok"
        )
        second, third = [], []
        # every variable's JSON type and value in one read of the reason each (a list of paths), not one per
        # variable; the lists' items are then the per-variable columns
        paths = "[" + ", ".join(literal(f'$."{name}"') for name in self.names) + "]"
        lists = (
            f"case when _reason_object then json_type({reason}, {paths}) end as _kinds, "
            f"case when _reason_object then json_extract({reason}, {paths}) end as _values"
        )
        for name, index in self.names.items():
            if has_reason:
                second.append(f"_kinds[{index + 1}] as _k{index}, _values[{index + 1}] as _e{index}")
            else:
                second.append(f"null::varchar as _k{index}, null::json as _e{index}")
            kind, value = f"_k{index}", f"_e{index}"
            text = f"({value} ->> '$')"
            column_text, column_truth = self._column(name)
            third.append(
                f"(case {kind} when 'VARCHAR' then {text} when 'NULL' then 'None' "
                f"when 'BOOLEAN' then (case when {value}::boolean then 'True' else 'False' end) "
                f"when 'BIGINT' then {text} when 'UBIGINT' then {text} "
                f"when 'DOUBLE' then (case when abs({value}::double) < {_DOUBLE_LIMIT} "
                f"then {value}::double::varchar end) "
                f"else (case when {kind} is null then {column_text} end) end) as _t{index}, "
                f"(case {kind} when 'VARCHAR' then {text} <> '' when 'NULL' then false "
                f"when 'BOOLEAN' then {value}::boolean when 'BIGINT' then {value}::hugeint <> 0 "
                f"when 'UBIGINT' then {value}::hugeint <> 0 when 'DOUBLE' then {value}::double <> 0 "
                f"else (case when {kind} is null then {column_truth} end) end) as _b{index}"
            )
        if not (has_reason and self.names):
            return [first, ", ".join(second) or "1 as _no_variables", ", ".join(third) or "1 as _no_texts"]
        return [first, lists, ", ".join(second), ", ".join(third)]

    def _column(self, name: str) -> tuple[str, str]:
        if name in _ALIASES:
            source = _ALIASES[name]
            if source not in self.columns:
                return "'None'", "false"
            name = source
        elif name not in self.columns or name == self.reason:
            return "null", "null"  # missing: the Python path reports it
        kind = self.columns[name].upper()
        column = f'"{name}"'
        if kind == "VARCHAR":
            return f"coalesce({column}, 'None')", f"coalesce({column} <> '', false)"
        if kind in _INTEGER_TYPES:
            return f"coalesce({column}::varchar, 'None')", f"coalesce({column} <> 0, false)"
        if kind == "BOOLEAN":
            return (
                f"case when {column} is null then 'None' when {column} then 'True' else 'False' end",
                f"coalesce({column}, false)",
            )
        if kind == "DOUBLE":
            return (
                f"case when {column} is null then 'None' when abs({column}) < {_DOUBLE_LIMIT} "
                f"then {column}::varchar end",
                f"coalesce({column} <> 0, false)",
            )
        return "null", "null"


def _escape(expression: str) -> str:
    # what markupsafe.escape does to a string, in its order
    for char, entity in (("&", "&amp;"), (">", "&gt;"), ("<", "&lt;"), ("'", "&#39;"), ('"', "&#34;")):
        expression = f"replace({expression}, {literal(char)}, {literal(entity)})"
    return expression


def _expression(parts: list, values: Variables, html: bool) -> str:
    pieces = []
    for part in parts:
        if part[0] == "text":
            pieces.append(literal(part[1]))
        elif part[0] == "var":
            text = values.text(part[1])
            pieces.append(_escape(text) if html else text)
        else:
            then = _expression(part[2], values, html)
            otherwise = _expression(part[3], values, html)
            pieces.append(f"(case when {values.truth(part[1])} then {then} else {otherwise} end)")
    return "concat(" + ", ".join(pieces) + ")" if pieces else "''"


def render_sql(subject_parts: list, body_parts: list, html: bool, values: Variables) -> Rendered:
    """The SQL rendering of a simple template over a relation that has the columns of `values.layers()`."""
    subject = _expression(subject_parts, values, html=False)
    body = _expression(body_parts, values, html)
    # single_line: runs of CR/LF become one space, then Python whitespace is stripped at both ends
    subject = (
        f"regexp_replace(regexp_replace({subject}, '[\\r\\n]+', ' ', 'g'), "
        f"'^{_SPACE_CLASS}+|{_SPACE_CLASS}+$', '', 'g')"
    )
    checks = [values.reason_ok]
    checks += [
        f"{values.text(name)} is not null" for name in sorted(_names(subject_parts) | _names(body_parts))
    ]
    checks += [f"{values.truth(name)} is not null" for name in sorted(_if_names(subject_parts + body_parts))]
    return Rendered(subject=subject, body=body, renderable="(" + " and ".join(checks) + ")")


def _if_names(parts: list) -> set[str]:
    names: set[str] = set()
    for part in parts:
        if part[0] == "if":
            names |= {part[1]} | _if_names(part[2]) | _if_names(part[3])
    return names
